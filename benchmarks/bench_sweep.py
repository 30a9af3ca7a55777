"""Sweep overhead, all measured in one run (on demand: `python benchmarks/bench_sweep.py`).

1. The quickstart sweep through `basin run` (local Ray started here, MLflow in SQLite, Parquet) against the
   same trials back-to-back in one plain process (trainers.train.run_trial + FolderSink: no Ray, no
   MLflow), as a ratio of wall times, against the faster of the plain process with torch's default threads
   and with one thread. Target <= 1.15x on 2 cores. Ray's start-up is in the runner's time (the user waits
   for it) and also shown apart.
2. Per-trial overhead of the runner: N trivial trials (1 epoch, tiny model, no evaluation grid), one at
   a time on one CPU, through the runner minus back-to-back in-process (one torch thread), in ms/trial,
   with the MLflow mirror (SQLite) and without it.
3. Where the runner's time goes: Parquet writes, checkpoints, Tune reports (inside the trials) and the
   driver's MLflow thread, as a share of the trials' training time.
4. The report `basin run` writes at the end of the quickstart (analysis.build_report), in seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRIVIAL = dict(dataset="digits", model="mlp", width=1, epochs=1, warmup_epochs=0, alpha_grid=2,
               ensemble_samples=0, eval_every=0, save_predictions=False, checkpoint_every=1, shape="point")


def in_process(trials, root: Path, sweep: str, threads: int | None) -> float:
    """The same trials back-to-back in this process: run_trial with the plain Parquet sink."""
    import torch

    from trainers.results import FolderSink
    from trainers.train import run_trial

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for t in trials:
        run_trial(t.config, FolderSink(root, sweep, t.key, 0, name=t.name))
    return time.perf_counter() - t0


def through_runner(sweep) -> tuple[float, object]:
    from orchestrator.runner import run_sweep

    t0 = time.perf_counter()
    summary = run_sweep(sweep, every=30, report=False)  # the report is timed apart ([4])
    assert summary.ok, summary.failed
    return time.perf_counter() - t0, summary


def shares(summary) -> str:
    t = summary.timings
    base = max(t.get("trial_s", 0.0), 1e-9)
    parts = [f"{k[:-2]} {100 * t.get(k, 0.0) / base:.1f}%" for k in ("parquet_s", "checkpoint_s", "report_s",
                                                                     "mlflow_s")]
    return f"{', '.join(parts)} of {base:.1f} s of trial time"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default=str(ROOT / "sweeps" / "quickstart.yaml"))
    ap.add_argument("--trivial", type=int, default=200, help="number of trivial trials (0: skip)")
    ap.add_argument("--keep", action="store_true", help="keep the results folders")
    args = ap.parse_args()

    import ray

    from orchestrator.runner import start_ray
    from orchestrator.sweep import load_sweep, parse_sweep

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    cpus = os.cpu_count()
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f} at start; results under {work}")
    try:
        # 1. the quickstart sweep
        sweep = load_sweep(args.sweep, results=str(work / "runner"))
        trials = sweep.trials
        # The plain process twice: torch's default threads (all cores) and one thread; the ratio is taken
        # against the faster, so a loaded machine cannot flatter the runner.
        plain_all = in_process(trials, work / "plain" / sweep.name, sweep.name, threads=None)
        print(f"[1] {len(trials)} trials back-to-back in one process, {cpus} torch threads: {plain_all:.1f} s")
        plain_one = in_process(trials, work / "plain1" / sweep.name, sweep.name, threads=1)
        print(f"[1] {len(trials)} trials back-to-back in one process, 1 torch thread: {plain_one:.1f} s")
        plain = min(plain_all, plain_one)
        t0 = time.perf_counter()
        start_ray(None, None)
        ray_start = time.perf_counter() - t0
        wall, summary = through_runner(sweep)
        wall += ray_start
        print(f"[1] through basin run (Ray {sweep.cpus:g} CPU/trial, MLflow SQLite, Parquet): {wall:.1f} s "
              f"(Ray start {ray_start:.1f} s)")
        print(f"[1] ratio runner / faster plain process: {wall / plain:.2f}x (target <= 1.15x); "
              f"without Ray start {(wall - ray_start) / plain:.2f}x")
        print(f"[3] quickstart: {shares(summary)}")
        from orchestrator.runner import build_report
        from orchestrator.store import Store

        t0 = time.perf_counter()
        build_report(sweep, Store(sweep.dir))
        print(f"[4] the report basin run writes at the end (--no-report skips it): {time.perf_counter() - t0:.1f} s, "
              f"{100 * (time.perf_counter() - t0) / wall:.0f}% of the run")

        # 2. trivial trials, one at a time: the runner's cost per trial
        if args.trivial:
            plain_t = None
            for mlflow in (None, False):
                data = {"name": f"trivial{'' if mlflow is None else '-nomlflow'}", "base": TRIVIAL,
                        "axes": {"seed": list(range(args.trivial))}, "max_concurrent": 1}
                tsweep = parse_sweep(data, "<trivial>", "", results=str(work / "runner"), mlflow=mlflow)
                ttrials = tsweep.trials
                if plain_t is None:
                    plain_t = in_process(ttrials, work / "plain" / "trivial", "trivial", threads=1)
                    print(f"[2] {len(ttrials)} trivial trials in process: {plain_t:.1f} s "
                          f"({plain_t / len(ttrials) * 1000:.0f} ms/trial)")
                wall_t, tsummary = through_runner(tsweep)
                per = (wall_t - plain_t) / len(ttrials) * 1000
                what = "with MLflow (SQLite)" if mlflow is None else "without MLflow"
                print(f"[2] through the runner {what}: {wall_t:.1f} s: overhead {per:.0f} ms/trial")
                print(f"[3] trivial {what}: {shares(tsummary)}")
        ray.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
