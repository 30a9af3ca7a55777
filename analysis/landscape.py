"""Landscapes: metrics along the α grid of lines and curves, and over the barycentric grid of an m = 3
simplex, averaged over seeds.

The contrast line (the barrier between two independently trained standard models) is any trial that
records α-grid evaluations but is not judged by its centre (analysis.trials.barrier_centres: `independent`):
the trainer evaluates the straight line between its two independently trained endpoints exactly like a
line's grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import ID
from analysis.metrics import METRICS
from analysis.tables import final_evals, mean_std
from analysis.trials import REPLICATE, as_results, barrier_centres, varying_axes, with_groups


def alpha_curves(results: Any, split: str = "test", metrics: Sequence[str] = METRICS,
                 replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """Mean ± std over seeds of each metric at each α of every line/curve group (clean test set), with
    `role` = "subspace" or "barrier" (the line between separately trained nets)."""
    results = as_results(results)
    ev = final_evals(results, split, "all", clean_only=True)
    ev = ev[ev["alpha"].notna() & ev["kind"].isin(["alpha", "endpoint", "center"])
            & (ev["method"] != "connect")] if len(ev) else ev  # connect trials: analysis/probes.py
    cols = ["sweep", "group", "group_label", "role", "alpha"]
    if ev.empty:
        return pd.DataFrame(columns=cols + ["n", "trials", "seeds"])
    # one value per α per trial: the grid rows, else endpoint/center rows that carry the same α
    ev = ev.assign(alpha=ev["alpha"].round(6), _grid=ev["kind"] != "alpha")
    ev = ev.sort_values("_grid").drop_duplicates(ID + ["alpha"], keep="first")
    groups = with_groups(results.trials.merge(ev[ID].drop_duplicates(), on=ID), replicate)
    ev = ev.merge(groups[ID + ["group", "group_label"]], on=ID)
    ev["role"] = np.where(barrier_centres(ev), "barrier", "subspace")
    out = mean_std(ev, cols, metrics)
    axes = varying_axes(groups, replicate)
    info = groups.drop_duplicates("group").set_index("group")[axes]
    return out.join(info, on="group").sort_values(["sweep", "role", "group_label", "alpha"]).reset_index(drop=True)


def simplex_grid(results: Any, split: str = "test", metrics: Sequence[str] = METRICS,
                 replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """Mean ± std over seeds of each metric at each barycentric point of m = 3 simplex trials, with the
    coordinates as c0, c1, c2 (grid rows plus the endpoints and centroid)."""
    results = as_results(results)
    ev = final_evals(results, split, "all", clean_only=True)
    if len(ev):
        ev = ev[(ev["shape"] == "simplex") & (ev["endpoints"] == 3)
                & ev["kind"].isin(["simplex", "endpoint", "center"])]
        ev = ev[ev["coords"].map(lambda c: c is not None and len(c) == 3)]
    cols = ["sweep", "group", "group_label", "c0", "c1", "c2"]
    if ev.empty:
        return pd.DataFrame(columns=cols + ["n", "trials", "seeds"])
    xyz = np.round(np.stack(ev["coords"].to_list()).astype(np.float64), 4)
    ev = ev.assign(c0=xyz[:, 0], c1=xyz[:, 1], c2=xyz[:, 2], _grid=ev["kind"] != "simplex")
    ev = ev.sort_values("_grid").drop_duplicates(ID + ["c0", "c1", "c2"], keep="first")
    groups = with_groups(results.trials.merge(ev[ID].drop_duplicates(), on=ID), replicate)
    ev = ev.merge(groups[ID + ["group", "group_label"]], on=ID)
    return mean_std(ev, cols, metrics).sort_values(cols).reset_index(drop=True)


def barycentric_xy(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric (.., 3) -> 2-D points of the triangle with vertices (0,0), (1,0), (1/2, √3/2)."""
    c = np.asarray(c, dtype=np.float64)
    return c[..., 1] + c[..., 2] / 2, c[..., 2] * np.sqrt(3) / 2

