"""Calibration: reliability diagrams (per-bin accuracy against confidence) and the ECE table.

Bins are the trainer's: `bins` equal-width, right-closed confidence bins (analysis.metrics.bin_index).
A group's diagram pools the test predictions of all its seeds at their main point, so each bin's accuracy
and confidence are averages over every example of every seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import ID
from analysis.metrics import bin_sums
from analysis.predictions import Probs, final_main, load_core
from analysis.tables import calibration_table
from analysis.trials import REPLICATE, as_results, with_groups

__all__ = ["calibration_table", "reliability_curves"]


def reliability_curves(results: Any, bins: int = 15, probs: Probs | None = None,
                       replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """One row per (sweep, group, bin): lo, hi, count, accuracy, confidence (NaN when the bin is empty),
    plus the pooled ECE of the group and how many trials/seeds it pools."""
    results = as_results(results)
    probs = load_core(results) if probs is None else probs
    cols = ["sweep", "group", "group_label", "bin", "lo", "hi", "count", "accuracy", "confidence", "ece",
            "trials", "seeds"]
    main = final_main(probs.meta)
    if main.empty:
        return pd.DataFrame(columns=cols)
    trials = with_groups(results.trials, replicate)
    main = main.drop(columns=["group", "group_label"], errors="ignore").merge(
        trials[ID + ["group", "group_label"]], on=ID)
    out = []
    for (sweep, group, glabel, _), rows in main.groupby(["sweep", "group", "group_label", "block"]):
        p, y = probs.arrays(rows)
        pred = p.argmax(-1)
        conf = np.take_along_axis(p, pred[..., None], -1)[..., 0]
        count, hits, confs = (a.sum(0) for a in bin_sums(conf, pred == y, bins))
        n = count.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(pd.DataFrame({
                "sweep": sweep, "group": group, "group_label": glabel, "bin": np.arange(bins),
                "lo": np.arange(bins) / bins, "hi": np.arange(1, bins + 1) / bins, "count": count,
                "accuracy": hits / count, "confidence": confs / count,
                "ece": np.abs(hits - confs).sum() / n,
                "trials": rows["trial_key"].nunique(), "seeds": rows["seed"].nunique(),
            }))
    return pd.concat(out, ignore_index=True)[cols]
