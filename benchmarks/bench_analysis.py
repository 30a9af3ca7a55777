"""Analysis speed: ensemble-size curves and robustness/calibration tables for a synthetic results folder
(default 1,000 trials x 10,000 test examples x 10 classes, written here as real Parquet), against a
straightforward pandas groupby implementation measured in the same run. Targets on 2 cores: <= 10 s at
1,000 trials; <= 30 s at 10,000 trials as `basin run` leaves the folder (no manual compact).

    python benchmarks/bench_analysis.py [--trials 1000] [--examples 10000] [--layout compact,per-trial,run]
    python benchmarks/bench_analysis.py --trials 10000 --layout per-trial,run --no-naive   # the 10k case

Layouts: `compact` = a few large files (as after `basin compact`); `per-trial` = one file per trial and table
(as trials write them; a run still going, or killed); `run` = the per-trial folder after the merge that
`basin run` does at its end (orchestrator.status.compact_run, timed here too). Each layout also times
`basin status` (its reader) and `analysis.load(...).trials`, with ratios to the first layout measured.

The synthetic sweep: 4 shapes x BatchNorm on/off x 5 label-noise rates = 40 groups x 25 seeds; every trial
has its main point's test probabilities (one predictions row) and a few evals rows. Both implementations
read the folder from disk, score the same seed subsets (analysis.ensembles.subset_weights with one RNG
seed) and build the same tables; the largest difference between their numbers is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis import ensembles, load, tables
from analysis.metrics import bin_index
from analysis.trials import group_keys, main_point
from trainers.config import make_config
from trainers.folder import Folder, to_arrow
from trainers.results import trial_row
from trainers.schema import SCHEMAS

SHAPES = [dict(shape="point"), dict(shape="line"), dict(shape="curve"), dict(shape="simplex", endpoints=3)]
NOISE = [0.0, 0.1, 0.2, 0.4, 0.6]
SWEEP = "bench"


def configs(n_trials: int) -> list[dict]:
    groups = [dict(**s, batchnorm=bn, label_noise=nz) for s in SHAPES for bn in (True, False) for nz in NOISE]
    seeds = max(1, n_trials // len(groups))
    out = [dict(**g, seed=s) for s in range(seeds) for g in groups]
    return out[:n_trials]


def write_folder(root: Path, n_trials: int, n: int, c: int, layout: str, seed: int = 0) -> None:
    """Trials, evals and predictions tables, one file per trial (as trials write them) or a few large
    files (as after `basin compact`)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n).astype(np.int32)
    onehot = np.eye(c, dtype=np.float32)[labels]
    ident = ("sweep", "trial_key", "attempt")
    batch: dict[str, list[pa.Table]] = {"trials": [], "evals": [], "predictions": []}

    def flush(name: str) -> None:
        if batch["trials"]:
            for t in ("evals", "predictions", "trials"):  # trials last, as trials do
                Folder(str(root)).write_table(f"{t}/{name}.parquet", pa.concat_tables(batch[t]))
                batch[t].clear()

    for i, cfg_vals in enumerate(configs(n_trials)):
        cfg = make_config({**cfg_vals, "epochs": 10})
        key = cfg.key()
        point = main_point(cfg.shape)
        quality = 2.0 + 1.5 * rng.random() - 2.0 * cfg.label_noise
        logits = rng.standard_normal((n, c), dtype=np.float32) + quality * onehot
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        acc = float((p.argmax(1) == labels).mean())
        idn = dict(sweep=SWEEP, trial_key=key, attempt=0)
        values = pa.array(p.ravel(), pa.float32())
        preds = pa.Table.from_arrays([
            pa.array([SWEEP]), pa.array([key]), pa.array([0], pa.int32()), pa.array([cfg.epochs], pa.int32()),
            pa.array(["test"]), pa.array([point]), pa.array(["center"]), pa.array([""]), pa.array([c], pa.int32()),
            pa.ListArray.from_arrays(pa.array([0, n * c], pa.int32()), values),
            pa.ListArray.from_arrays(pa.array([0, n], pa.int32()), pa.array(labels, pa.int32())),
        ], schema=SCHEMAS["predictions"])
        evals = [dict(idn, epoch=cfg.epochs, split=s, point=pt, kind="center", members=1, accuracy=a,
                      nll=1 - a, brier=1 - a, ece=0.05 + 0.1 * rng.random(), corruption="", severity=0)
                 for s, pt, a in (("test", point, acc), ("val", point, acc), ("test", "endpoint_0", acc - 0.01))]
        trial = trial_row(cfg.to_dict(), name=key, status="completed", error="", seconds=1.0, main_point=point,
                          main_ensemble="" if cfg.shape == "point" else "ensemble_endpoints", **idn)
        batch["predictions"].append(preds)
        batch["evals"].append(to_arrow("evals", evals))
        batch["trials"].append(to_arrow("trials", [trial]))
        assert all(k in trial for k in ident)
        if layout == "per-trial":
            flush(f"{key}-a0")
        elif len(batch["trials"]) == 100:
            flush(f"part-{i // 100:04d}")
    flush("part-last")


# -- ours -------------------------------------------------------------------------------------------------
def ours(root: Path, n_subsets: int, max_points: int) -> tuple[pd.DataFrame, list[tables.Table]]:
    r = load(str(root))
    curves = ensembles.ensemble_curves(r, sources=["seeds"], n_subsets=n_subsets, max_points=max_points)
    return curves, [tables.robustness_table(r), tables.calibration_table(r)]


# -- the straightforward pandas version -------------------------------------------------------------------
def naive_scores(p: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float]:
    pred = p.argmax(1)
    conf = p.max(1).astype(np.float64)
    onehot = np.eye(p.shape[1])[y]
    idx = bin_index(conf, bins)
    correct = pred == y
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return {"accuracy": correct.mean(), "nll": -np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean(),
            "brier": ((p - onehot) ** 2).sum(1).mean(), "ece": ece}


def naive(root: Path, n_subsets: int, max_points: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    r = load(str(root))
    trials = r.trials
    axes = [c for c in ("shape", "endpoints", "batchnorm", "label_noise")]
    trials = trials.assign(group=group_keys(trials))
    df = r.predictions.merge(trials, on=["sweep", "trial_key", "attempt"])
    df = df[df["point"] == df["shape"].map(main_point)]
    rows = []
    for keys, g in df.groupby(["sweep", *axes], sort=True):
        rng = ensembles.group_rng(0, g["group"].iloc[0])  # the same subsets as analysis draws
        g = g.sort_values("seed")
        members = [np.asarray(p, np.float32).reshape(-1, int(c))
                   for p, c in zip(g["probs"], g["n_classes"], strict=True)]
        y = np.asarray(g["labels"].iloc[0])
        ks = ensembles.k_grid(len(members), max_points)
        w, sizes = ensembles.subset_weights(len(members), ks, n_subsets, rng)
        for wrow, k in zip(w, sizes, strict=True):
            ens = np.mean([members[i] for i in np.flatnonzero(wrow)], axis=0)
            rows.append({**dict(zip(["sweep", *axes], keys, strict=True)), "k": k, **naive_scores(ens, y)})
    curves = pd.DataFrame(rows).groupby(["sweep", *axes, "k"])[["accuracy", "nll", "brier", "ece"]] \
        .agg(["mean", "std"])
    ev = r.evals.merge(trials, on=["sweep", "trial_key", "attempt"])
    ev = ev[(ev["split"] == "test") & (ev["point"] == ev["shape"].map(main_point))]
    robust = ev.groupby(["sweep", "shape", "endpoints", "batchnorm", "label_noise"])[["accuracy", "ece"]] \
        .agg(["mean", "std"])
    calib = ev.groupby(["sweep", "shape", "endpoints", "batchnorm", "label_noise", "point"])[
        ["accuracy", "nll", "brier", "ece"]].agg(["mean", "std"])
    return curves, robust, calib


def readers(root: Path) -> dict[str, float]:
    """Seconds for `basin status`'s reading (orchestrator.status.sweep_status) and for analysis.load's trials."""
    from orchestrator.status import sweep_status

    t = time.perf_counter()
    status = sweep_status(str(root))
    out = {"status": time.perf_counter() - t}
    t = time.perf_counter()
    trials = load(str(root)).trials
    out["load.trials"] = time.perf_counter() - t
    assert status["completed"] == len(trials), (status, len(trials))
    return out


def run(root: Path, layout: str, args: argparse.Namespace, base: dict[str, float]) -> None:
    t = time.perf_counter()
    if layout == "run":  # the per-trial folder, merged as `basin run` does at its end
        from orchestrator.status import compact_run
        from orchestrator.store import Store

        if not (root / "trials").exists():
            write_folder(root, args.trials, args.examples, args.classes, "per-trial")
        t = time.perf_counter()
        merged = compact_run(Store(str(root)))
        print(f"\n  end-of-run merge: {sum(n for n, _ in merged.values())} files -> {len(merged)} in "
              f"{time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
    elif not (root / "trials").exists():
        write_folder(root, args.trials, args.examples, args.classes, layout)
    files = list(root.rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"\n{layout} layout: {args.trials} trials x {args.examples} examples x {args.classes} classes, "
          f"{len(files)} files, {size:.0f} MiB, written in {time.perf_counter() - t:.1f} s")
    read = readers(root)
    read = {k: min(v, readers(root)[k]) for k, v in read.items()}  # best of 2
    ratio = {k: f" ({v / base[k]:.3g}x the {base['layout']} layout)" if base else "" for k, v in read.items()}
    print(f"  basin status: {read['status']:6.2f} s{ratio['status']}   analysis.load().trials: "
          f"{read['load.trials']:6.2f} s{ratio['load.trials']}")

    # interleaved rounds, best of each: load from other processes falls on both alike
    times: dict[str, list[float]] = {"ours": [], "naive": []}
    for _ in range(args.repeat):
        t = time.perf_counter()
        curves, tabs = ours(root, args.subsets, args.max_points)
        times["ours"].append(time.perf_counter() - t)
        if args.naive:
            t = time.perf_counter()
            n_curves, n_robust, n_calib = naive(root, args.subsets, args.max_points)
            times["naive"].append(time.perf_counter() - t)
    t_ours = min(times["ours"])
    read["analysis"] = t_ours
    target = 10 if args.trials <= 1000 else 30
    print(f"  analysis (read + curves + robustness + calibration tables): {t_ours:6.2f} s "
          f"({len(curves)} curve points from {int(curves['n'].sum())} ensembles; target <= {target} s)"
          + (f"  ({t_ours / base['analysis']:.2f}x the {base['layout']} layout)" if base else ""))
    base.update({} if base else {**read, "layout": layout})
    if not args.naive:
        return
    t_naive = min(times["naive"])
    print(f"  pandas groupby baseline (same work):                        {t_naive:6.2f} s")
    every = {k: ", ".join(f"{x:.1f}" for x in v) for k, v in times.items()}
    print(f"  speed-up: {t_naive / t_ours:.1f}x   (best of {args.repeat}; all: ours {every['ours']} s, "
          f"baseline {every['naive']} s)")

    mine = curves.set_index(["sweep", "shape", "endpoints", "batchnorm", "label_noise", "k"])
    diff = max(float(np.nanmax(np.abs(mine[f"{m}_mean"].to_numpy() - n_curves[(m, "mean")].reindex(
        mine.index).to_numpy()))) for m in ("accuracy", "nll", "brier", "ece"))
    rob = tabs[0].data[tabs[0].data["metric"] == "accuracy"].set_index(
        ["sweep", "shape", "endpoints", "batchnorm", "label_noise"])["mean"]
    diff_t = float(np.nanmax(np.abs(rob.to_numpy() - n_robust[("accuracy", "mean")].reindex(rob.index))))
    print(f"  largest difference from the baseline: curves {diff:.1e}, robustness table {diff_t:.1e} "
          f"({len(n_calib)} calibration rows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--subsets", type=int, default=10, help="random seed subsets per ensemble size")
    ap.add_argument("--max-points", type=int, default=12, help="ensemble sizes per curve")
    ap.add_argument("--layout", default="compact,per-trial,run",
                    help="comma-separated, in order: compact (few large files, after `basin compact`), per-trial "
                         "(one file per trial and table), run (per-trial merged as `basin run` does at its end; "
                         "after per-trial it merges that same folder)")
    ap.add_argument("--no-naive", dest="naive", action="store_false",
                    help="skip the pandas baseline (at 10,000 trials it holds the probabilities twice in memory)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the best of each is reported")
    ap.add_argument("--keep", default="", help="write the folders here and keep them (default: a temp dir)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {args.subsets} subsets per k, "
          f"up to {args.max_points} ensemble sizes per curve")
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench_analysis_"))
    base: dict = {}
    try:
        for layout in args.layout.split(","):
            folder = "per-trial" if layout == "run" else layout  # `run` merges the per-trial folder in place
            run(tmp / folder / SWEEP, layout, args, base)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
