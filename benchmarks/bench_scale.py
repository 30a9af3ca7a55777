"""A sweep of many trivial trials through `basin run` (on demand: `python benchmarks/bench_scale.py`).

Trials: digits, a width-1 MLP, one epoch, no evaluation grid (their own work is a few ms), so what is measured
is basin's and Ray Tune's overhead. Two sweeps in one run, the small one (`--trials / 10`) the baseline:

- time to the first trial (from `run_sweep` to the first attempt's start): should not grow with the trials
  (Tune gets them lazily, orchestrator/feeder.py), target: seconds at 10,000;
- wall time per trial after the first started, and the overhead per trial (wall per trial less the trials'
  own seconds divided by the trials running at once): flat from the small sweep to the large one, target
  <= 50 ms at 10,000;
- the driver's peak resident memory while the sweep runs (this process: the driver runs here);
- `basin status` and `analysis.load` on the large sweep's folder (per-trial files, no compaction).

    python benchmarks/bench_scale.py                  # 10,000 trials and 1,000 (MLflow on, SQLite)
    python benchmarks/bench_scale.py --trials 2000 --no-mlflow
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

TRIVIAL = dict(dataset="digits", model="mlp", width=1, epochs=1, warmup_epochs=0, alpha_grid=2,
               ensemble_samples=0, eval_every=0, save_predictions=False, checkpoint_every=1, shape="point")


def run(n: int, root: Path, mlflow: bool) -> dict[str, float]:
    from analysis.load import load
    from orchestrator.runner import run_sweep
    from orchestrator.status import sweep_status
    from orchestrator.store import Store
    from orchestrator.sweep import load_sweep

    name = f"scale{n}"
    path = root / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase: {json.dumps(TRIVIAL)}\naxes:\n  seed: {json.dumps(list(range(n)))}\n"
                    f"results: {root / 'results'}\nmax_trials: {max(n, 1)}\n" + ("" if mlflow else "mlflow: false\n"))
    import psutil

    me, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:  # the driver's resident memory while the sweep runs (the Tune loop, the mirror)
        while not done.wait(0.5):
            peak[0] = max(peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.time()
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=60, report=False)
    end = time.time()
    done.set()
    sampler.join()
    assert summary.ok, list(summary.failed.items())[:3]
    store = Store(sweep.dir)
    t = time.perf_counter()
    st = sweep_status(sweep.dir)
    status_s = time.perf_counter() - t
    t = time.perf_counter()
    res = load(sweep.dir)
    load_s = time.perf_counter() - t
    assert st["completed"] == n and len(res.trials) == n and res.trials.trial_key.is_unique
    first = min(a["started_at"] for a in (store.attempts(k)[0] for k in res.trials.trial_key))
    wall = (end - first) / n
    own = float(res.trials.seconds.sum()) / n / 2  # two trials at once on 2 CPUs
    return dict(first_s=first - t0, wall_ms=1000 * wall, overhead_ms=1000 * (wall - own), status_s=status_s,
                load_s=load_s, rss_mb=peak[0] / 2 ** 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the results folder")
    args = ap.parse_args()

    from orchestrator.runner import start_ray

    root = Path(tempfile.mkdtemp(prefix="basin-scale-"))
    start_ray(None, 2)
    try:
        small = run(max(1, args.trials // 10), root, not args.no_mlflow)
        large = run(args.trials, root, not args.no_mlflow)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'':<28}{args.trials // 10:>10}{args.trials:>10}   ratio")
    labels = {"first_s": "to the first trial (s)", "wall_ms": "wall per trial (ms)",
              "overhead_ms": "overhead per trial (ms)", "status_s": "basin status (s)", "load_s": "analysis.load (s)",
              "rss_mb": "driver RSS during run (MB)"}
    for k, label in labels.items():
        print(f"{label:<28}{small[k]:>10.2f}{large[k]:>10.2f}   {large[k] / max(small[k], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
