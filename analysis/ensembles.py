"""Ensemble-size curves: accuracy, NLL, ECE and Brier against ensemble size k (probabilities averaged).

Sources of members, found in the data:
- `seeds`: independently trained models — trials of one group (configs equal except `seed`), each at its
  main point (analysis.trials.main_points). Each k is scored on random subsets of k seeds (all subsets
  when there are at most `n_subsets`); cells are mean ± std over those subsets.
- `checkpoints`: the k latest checkpoints of one trajectory (per-epoch predictions, `epoch_predictions`);
- every ensemble the trainer recorded members of (`member_of`): `endpoints` of a subspace, random
  `samples` of it, SWA's `snapshots`, MIMO's `members`, and the samples Fort et al. draw around one
  solution (`random`, `dropout`, `gaussian`, `pca`): the first k members of one trial.
For all but `seeds`, one curve per trial; cells are mean ± std over the trials of a group (its seeds).

Every ensemble is a weighted sum of member probabilities, so a whole set of ensembles is one matrix
product: weights (B, M) @ probs (M, N*C). The probabilities of all trials are stacked once
(analysis.predictions) and scored in batches (analysis.metrics.scores): no per-row pandas.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from analysis.metrics import METRICS, scores_class_major
from analysis.predictions import Probs, final_main, load_core, trajectory
from analysis.trials import REPLICATE, as_results, varying_axes, with_groups

# Known sources in display order; any other `member_of` group in the data follows them.
SOURCES = ("seeds", "checkpoints", "endpoints", "samples", "snapshots", "members", "random", "dropout", "gaussian",
           "pca")
_BATCH_BYTES = 8 << 20  # ensembles scored at once: temporaries stay small enough to reuse (and cache)


def k_grid(m: int, max_points: int = 12) -> list[int]:
    """Ensemble sizes 1..m, thinned to about `max_points` roughly geometric sizes when m is large."""
    if m <= max_points:
        return list(range(1, m + 1))
    return sorted({int(round(x)) for x in np.geomspace(1, m, max_points)} | {1, m})


def prefix_weights(m: int, ks: Iterable[int]) -> np.ndarray:
    """(K, m): row i averages the first ks[i] members."""
    ks = list(ks)
    w = np.zeros((len(ks), m), np.float32)
    for i, k in enumerate(ks):
        w[i, :k] = 1.0 / k
    return w


def subset_weights(m: int, ks: Iterable[int], n_subsets: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(B, m) weights averaging subsets of the m members, and the k of each row. For each k: every subset
    when there are at most n_subsets of them, else n_subsets random ones (without replacement within one)."""
    rows, sizes = [], []
    for k in ks:
        if math.comb(m, k) <= n_subsets:
            subsets = [list(c) for c in combinations(range(m), k)]
        else:
            subsets = [rng.choice(m, size=k, replace=False) for _ in range(n_subsets)]
        for s in subsets:
            w = np.zeros(m, np.float32)
            w[s] = 1.0 / k
            rows.append(w)
            sizes.append(k)
    return np.array(rows, np.float32).reshape(-1, m), np.array(sizes, np.int64)


def group_rng(seed: int, group: str) -> np.random.Generator:
    """The subsets' RNG of one group: a function of the seed and the group alone, so a group's numbers do
    not change when other groups are added to the folder."""
    return np.random.default_rng([seed, zlib.crc32(group.encode())])


def ensemble(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Average (or weight) member probabilities: (M, N, C) -> (N, C)."""
    probs = np.asarray(probs)
    if weights is None:
        return probs.mean(0)
    return np.tensordot(np.asarray(weights, probs.dtype), probs, axes=(0, 0))


_local = threading.local()


def _buffer(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A per-thread scratch array, reused across calls: a fresh array of tens of MB costs a page fault per
    4 KiB page on first touch, more than the matrix product that fills it."""
    need = shape[0] * shape[1]
    have = getattr(_local, "buf", None)
    if have is None or have.size < need or have.dtype != dtype:
        have = _local.buf = np.empty(need, dtype)
    return have[:need].reshape(shape)


def ensemble_scores(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                    bins: int = 15) -> dict[str, np.ndarray]:
    """Metrics of the B ensembles weights (B, M) @ probs (M, N, C); labels (N,). Returns metric -> (B,)."""
    m, n, c = probs.shape
    # classes before examples: the metrics then reduce over classes with elementwise passes
    flat = np.ascontiguousarray(probs.transpose(0, 2, 1)).reshape(m, c * n)
    weights = np.asarray(weights, probs.dtype)
    step = max(1, _BATCH_BYTES // (n * c * probs.itemsize))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    buf = _buffer((min(step, len(weights)), c * n), probs.dtype)
    for i in range(0, len(weights), step):
        w = weights[i:i + step]
        # a single member needs no matrix product (and stays bit-identical to the stored probabilities)
        single = (np.count_nonzero(w, axis=1) == 1) & np.isclose(w.max(1), 1.0)
        ens = buf[:len(w)]
        if single.all():
            np.take(flat, w.argmax(1), axis=0, out=ens)
        else:
            np.matmul(w, flat, out=ens)
        s = scores_class_major(ens.reshape(len(w), c, n), labels, bins)
        for k in METRICS:
            parts[k].append(s[k])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def _index(point: str) -> int:
    m = re.search(r"(\d+)$", point)
    return int(m.group(1)) if m else 0


def _same_labels(labels: np.ndarray) -> bool:
    return bool((labels == labels[:1]).all())


def sources_in(meta: pd.DataFrame) -> list[str]:
    """The sources the prediction rows offer, known ones first in SOURCES order (seeds and checkpoints are
    always offered: whether they have two members shows when they are scored)."""
    found = set(meta["member_of"]) - {""} if len(meta) else set()
    return [s for s in SOURCES if s in found or s in ("seeds", "checkpoints")] + sorted(found - set(SOURCES))


def source_order(sources: Iterable[str]) -> list[str]:
    """Sources sorted as SOURCES, unknown ones after them alphabetically."""
    rank = {s: i for i, s in enumerate(SOURCES)}
    return sorted(set(sources), key=lambda s: (rank.get(s, len(rank)), s))


def _members(probs: Probs, source: str) -> list[tuple[Any, pd.DataFrame]]:
    """(unit, ordered member rows) for each curve: a group for `seeds`, a trial for the others."""
    meta = probs.meta
    if meta.empty:
        return []
    if source == "seeds":
        main = final_main(meta)
        return [(g, rows.sort_values("seed")) for g, rows in main.groupby("group", sort=True)]
    if source == "checkpoints":  # the trajectory of the network the trial validates, latest first
        rows = trajectory(meta)
        return [(t, r.sort_values("epoch", ascending=False)) for t, r in rows.groupby("trial_key", sort=True)]
    rows = meta[meta["member_of"] == source]
    last = rows.groupby(["sweep", "trial_key"])["epoch"].transform("max")
    rows = rows[rows["epoch"] == last].assign(_i=lambda d: d["point"].map(_index))
    return [(t, r.sort_values("_i")) for t, r in rows.groupby("trial_key", sort=True)]


def ensemble_values(results: Any, sources: Iterable[str] | None = None, n_subsets: int = 10,
                    max_points: int = 12, bins: int = 15, seed: int = 0, split: str = "test",
                    replicate: Iterable[str] = REPLICATE, probs: Probs | None = None,
                    workers: int | None = None) -> pd.DataFrame:
    """One row per scored ensemble: sweep, source, group, trial_key and seed (per-trial sources; "" and -1
    for `seeds`), members (M), k, replicate (subset number, or the seed), the four metrics, and the trials
    and seeds the ensemble draws on. `ensemble_curves` summarises these. sources: default every source the
    predictions offer (sources_in). workers: threads (default: CPUs)."""
    results = as_results(results)
    trials = results.trials
    trials = with_groups(trials[trials["status"] == "completed"] if "status" in trials else trials, replicate)
    probs = load_core(results, split) if probs is None else probs
    sources = sources_in(probs.meta) if sources is None else list(sources)
    probs = Probs(probs.meta.drop(columns=["group"], errors="ignore")
                  .merge(trials[["sweep", "trial_key", "group"]], on=["sweep", "trial_key"]), probs.probs, probs.labels)
    jobs = []
    for source in sources:
        for unit, rows in _members(probs, source):
            if len(rows) >= 2 and rows["block"].nunique() == 1:
                jobs.append((source, unit, rows))

    def score(job: tuple[str, Any, pd.DataFrame]) -> pd.DataFrame | None:
        source, unit, rows = job
        p, y = probs.arrays(rows)
        if not _same_labels(y):
            warnings.warn(f"ensemble {source} {unit}: members have different test labels; skipped", stacklevel=3)
            return None
        m = len(rows)
        ks = k_grid(m, max_points)
        if source == "seeds":
            w, k = subset_weights(m, ks, n_subsets, group_rng(seed, unit))
            rep = np.concatenate([np.arange((k == kk).sum()) for kk in ks])
        else:
            w, k = prefix_weights(m, ks), np.array(ks)
            rep = np.full(len(ks), int(rows["seed"].iloc[0]))
        s = ensemble_scores(p, y[0], w, bins)
        first, per_group = rows.iloc[0], source == "seeds"
        return pd.DataFrame({
            "sweep": first["sweep"], "source": source, "group": first["group"],
            "trial_key": "" if per_group else first["trial_key"],
            "seed": -1 if per_group else int(first["seed"]),
            "members": m, "k": k, "replicate": rep, **s,
            "trials": rows["trial_key"].nunique(), "seeds": rows["seed"].nunique(),
        })

    # numpy releases the GIL in its loops: groups scored on several threads use several cores. BLAS stays
    # single-threaded: its own threads on top of ours (or of a busy machine) made the products 10x slower.
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    with threadpool_limits(limits=1, user_api="blas"):
        if workers == 1:
            out = [score(j) for j in jobs]
        else:
            with ThreadPoolExecutor(workers) as pool:
                out = list(pool.map(score, jobs))
    out = [o for o in out if o is not None]
    cols = ["sweep", "source", "group", "trial_key", "seed", "members", "k", "replicate", *METRICS,
            "trials", "seeds"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)


def ensemble_curves(results: Any, sources: Iterable[str] | None = None, n_subsets: int = 10,
                    max_points: int = 12, bins: int = 15, seed: int = 0, split: str = "test",
                    replicate: Iterable[str] = REPLICATE, values: pd.DataFrame | None = None,
                    probs: Probs | None = None) -> pd.DataFrame:
    """Mean ± std of each metric per (sweep, source, group, k), with the group's varying config axes as
    columns (for colouring), `n` (subsets or seeds averaged), `trials` and `seeds` (how many it summarises).
    std is the sample standard deviation (ddof=1): NaN where there is one value (k = M for seeds)."""
    results = as_results(results)
    if values is None:
        values = ensemble_values(results, sources, n_subsets, max_points, bins, seed, split, replicate, probs)
    trials = results.trials
    trials = with_groups(trials[trials["status"] == "completed"] if "status" in trials else trials, replicate)
    axes = varying_axes(trials, replicate)
    keys = ["sweep", "source", "group", "k"]
    if values.empty:
        return pd.DataFrame(columns=keys + ["group_label", "series", "setting", *axes, "n", "trials", "seeds"]
                            + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
    g = values.groupby(keys, sort=False)
    agg = g[list(METRICS)].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg["n"] = g.size()
    # what a cell summarises: the group's trials for `seeds`, else the trials (seeds) averaged over
    per_trial = np.array([src != "seeds" for src in agg.index.get_level_values("source")])
    agg["trials"] = np.where(per_trial, g["trial_key"].nunique(), g["trials"].max())
    agg["seeds"] = np.where(per_trial, g["seed"].nunique(), g["seeds"].max())
    agg = agg.reset_index()
    info = trials.drop_duplicates("group").set_index("group")[["group_label", "series", "setting", *axes]]
    agg = agg.join(info, on="group")
    order = {s: i for i, s in enumerate(source_order(agg["source"]))}
    agg = agg.sort_values(["sweep", "group_label", "source", "k"], key=lambda c: c.map(order) if c.name == "source"
                          else c).reset_index(drop=True)
    return agg[keys + ["group_label", "series", "setting", *axes, "n", "trials", "seeds"]
               + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]]
