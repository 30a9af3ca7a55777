"""Methods side by side, as the papers compare them: the "best of an axis" baselines and the rows behind the
papers' figures (accuracy by method, centre accuracy against m, ECE by method, robustness to label noise).

"Best of an axis" (Wortsman et al.'s "Dropout (best)", "Label Smoothing (best)"): for each group of trials
that differ only in the seed and in one axis (say dropout), the axis value whose mean validation metric over
seeds at the main point is best is picked, and its *test* metrics are reported. Values equal to the field's
default (dropout 0: no dropout) are not candidates, so the row is the best dropout, not "dropout or none".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import ID
from analysis.metrics import METRICS
from analysis.tables import (
    HIGHER_IS_BETTER,
    Table,
    View,
    final_evals,
    fmt_mean_std,
    judged_evals,
    mean_std,
    unit,
)
from analysis.trials import (
    NAMED,
    REPLICATE,
    as_results,
    caption,
    fmt_value,
    group_keys,
    method_name,
    setting_axes,
    with_groups,
)
from trainers.config import FIELDS

# Axes with a "best of" baseline in the papers, and what the row is called.
BEST_OF = {"dropout": "Dropout", "label_smoothing": "Label smoothing"}


def best_of_axis(results: Any, axis: str, metric: str = "accuracy", select_split: str = "val",
                 split: str = "test", replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """One row per group of trials that differ only in seed and `axis` (and have at least one value of the
    axis other than its default): the value with the best mean `metric` on `select_split` at the main
    point (ties: the smallest value), its `select_<metric>`, the test metrics of that value (mean ± std
    over seeds), the candidates, and the series name of the row ("Dropout (best)" for standard training,
    "Line + dropout (best)" for a line: the method's name, without the extras of analysis.trials.series_names)."""
    results = as_results(results)
    trials = results.trials
    trials = trials[trials["status"] == "completed"] if "status" in trials else trials
    stats = [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    cols = ["sweep", "series", "series_order", "setting", "axis", "value", "candidates", f"select_{metric}",
            *stats, "n", "trials", "seeds", "group", "base"]
    if axis not in trials or trials[axis].nunique() < 2:
        return pd.DataFrame(columns=cols)
    default = FIELDS[axis].default
    t = with_groups(trials, replicate)
    t["base"] = group_keys(t, (*replicate, axis))
    t["base_name"] = [method_name(r) for r in t[list(NAMED)].assign(**{axis: default}).to_dict("records")]
    picked = final_evals(results, select_split, "main")[ID + [metric]].merge(t[ID + ["base", axis]], on=ID)
    scores = picked[picked[axis] != default].groupby(["base", axis])[metric].mean()
    if scores.empty:
        return pd.DataFrame(columns=cols)
    better = HIGHER_IS_BETTER.get(metric, True)
    best = {}
    for base, s in scores.groupby(level="base"):
        s = s.droplevel("base").sort_index()
        value = s.idxmax() if better else s.idxmin()
        best[base] = (value, float(s[value]), ", ".join(fmt_value(v) for v in s.index))
    test = final_evals(results, split, "main", clean_only=True)[ID + ["seed", *METRICS]] \
        .merge(t[ID + ["base", axis, "group"]], on=ID)
    chosen = test[[best.get(b, (None,))[0] == v for b, v in zip(test["base"], test[axis], strict=True)]]
    if chosen.empty:
        return pd.DataFrame(columns=cols)
    out = mean_std(chosen, ["sweep", "base"], METRICS)
    info = t.drop_duplicates("base").set_index("base")
    name = BEST_OF.get(axis, axis)
    out["series"] = [f"{name} (best)" if info.at[b, "base_name"] == "Standard"
                     else f"{info.at[b, 'base_name']} + {name.lower()} (best)" for b in out["base"]]
    out["series_order"] = [info.at[b, "series_order"] + 0.2 for b in out["base"]]
    out["setting"] = [info.at[b, "setting"] for b in out["base"]]
    out["axis"] = axis
    out["value"] = [best[b][0] for b in out["base"]]
    out[f"select_{metric}"] = [best[b][1] for b in out["base"]]
    out["candidates"] = [best[b][2] for b in out["base"]]
    out["group"] = [chosen.loc[chosen["base"] == b, "group"].iloc[0] for b in out["base"]]
    axes = setting_axes(t, replicate)
    out = out.join(info[axes], on="base")
    return out[cols + axes].sort_values(["sweep", "series_order", "setting"]).reset_index(drop=True)


def best_of_axes(results: Any, axes: Iterable[str] | None = None, metric: str = "accuracy",
                 replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """best_of_axis for each of `axes` (default: the BEST_OF axes), one frame."""
    results = as_results(results)
    frames = [best_of_axis(results, a, metric, replicate=replicate) for a in (axes or BEST_OF)]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else best_of_axis(results, "", metric)


def best_of_table(results: Any, axes: Iterable[str] | None = None, metric: str = "accuracy",
                  replicate: Iterable[str] = REPLICATE) -> Table:
    """The best-of-an-axis rows: picked value and its validation score, test metrics (mean ± std)."""
    results = as_results(results)
    d = best_of_axes(results, axes, metric, replicate)
    used = results.trials[results.trials["trial_key"].isin(
        with_groups(results.trials, replicate).loc[lambda t: t["group"].isin(set(d["group"])), "trial_key"])]
    title = f"Best of an axis: the value with the best validation {metric}, reported on the test set"
    if d.empty:
        return Table("best_of_axis", title, caption(used), d)
    several = d["setting"].nunique() > 1
    index = pd.MultiIndex.from_arrays([d["series"], d["setting"]], names=["series", "setting"]) if several \
        else pd.Index(d["series"], name="series")
    cells = pd.DataFrame({
        "picked": [f"{a}={fmt_value(v)}" for a, v in zip(d["axis"], d["value"], strict=True)],
        "of": d["candidates"].to_numpy(),
        f"val {unit(metric)}": [fmt_mean_std(v, np.nan, metric) for v in d[f"select_{metric}"]],
        **{f"test {unit(m)}": [fmt_mean_std(a, b, m) for a, b in zip(d[f"{m}_mean"], d[f"{m}_std"], strict=True)]
           for m in ("accuracy", "nll", "ece")},
    }, index=index)
    return Table("best_of_axis", title, caption(used, "picked per group by the mean over seeds on the validation "
                                               "split at the main point; test mean ± std over seeds"),
                 d.drop(columns=["base"]), [View("", cells)])


def paper_rows(results: Any, split: str = "test", best_of: Sequence[str] | None = None,
               replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """One row per trial (clean `split` evals at its main point) as the papers' figures compare methods:
    series as in analysis.trials, plus "Standard (opt. early stop)" (the early-stopping point of standard
    training), and for each best-of axis the per-value series replaced by the picked value's trials under
    the "(best)" name. Columns: identity, config, metrics, group, series, series_order, setting."""
    results = as_results(results)
    ev = judged_evals(results, split, early_stop="standard", clean_only=True, replicate=replicate)
    if ev.empty:
        return ev
    best = best_of_axes(results, best_of, replicate=replicate)
    if len(best):
        t = with_groups(results.trials, replicate)
        for axis, d in best.groupby("axis"):
            base = group_keys(t, (*replicate, axis))
            replaced = t.loc[base.isin(set(d["base"])) & (t[axis] != FIELDS[axis].default), "trial_key"]
            keep = ~ev["trial_key"].isin(set(replaced)) | (ev["point"] == "early_stop")
            picked = ev[ev["group"].isin(set(d["group"])) & (ev["point"] != "early_stop")]
            names = d.set_index("group")
            picked = picked.assign(series=picked["group"].map(names["series"]),
                                   series_order=picked["group"].map(names["series_order"]))
            ev = pd.concat([ev[keep], picked], ignore_index=True)
    return ev.sort_values(["series_order", "setting", "seed"], kind="stable").reset_index(drop=True)


def summarise(rows: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean ± std over seeds of `rows` per series and `by` (kept in series order)."""
    if rows.empty:
        return pd.DataFrame(columns=["series", "series_order", *by])
    out = mean_std(rows, ["series", "series_order", *by], metrics)
    return out.sort_values(["series_order", *by], kind="stable").reset_index(drop=True)


def _form(rows: pd.DataFrame) -> pd.Series:
    """The subspaces paper's training forms: standard, line, layer-wise line, curve (no other change)."""
    plain = (rows["method"] == "subspace") & (rows["dropout"] == 0) & (rows["label_smoothing"] == 0) \
        & (rows["point"] != "early_stop")
    return plain & rows["shape"].isin(["point", "line", "curve"])


def accuracy_by_form(results: Any, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Wortsman et al. Fig. 3: test accuracy (and the other metrics) of standard training, line, layer-wise
    line and curve at their main point, per setting (and per `epochs` when the sweep varies it). Empty
    unless the sweep has standard training and a line or curve."""
    rows = paper_rows(results) if rows is None else rows
    if rows.empty:
        return rows
    r = rows[_form(rows)]
    if not ((r["shape"] == "point").any() and (r["shape"] != "point").any()):
        return r.iloc[:0]
    return r


def centre_by_m(results: Any, rows: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wortsman et al. Fig. 4: accuracy of the subspace centre against the number of endpoints m (a line
    is m = 2), layer-wise and not, as series "Simplex (midpoint)" / "Simplex (layer-wise midpoint)"; and
    the references drawn across (standard training and SWA). Both empty unless m takes 2+ values."""
    rows = paper_rows(results) if rows is None else rows
    if rows.empty:
        return rows, rows
    plain = (rows["dropout"] == 0) & (rows["label_smoothing"] == 0) & (rows["point"] != "early_stop")
    sub = rows[plain & (rows["method"] == "subspace") & rows["shape"].isin(["line", "simplex"])]
    if sub["endpoints"].nunique() < 2:
        return sub.iloc[:0], sub.iloc[:0]
    sub = sub.assign(series=np.where(sub["layerwise"], "Simplex (layer-wise midpoint)", "Simplex (midpoint)"),
                     series_order=np.where(sub["layerwise"], 1, 0), m=sub["endpoints"])
    refs = rows[plain & (((rows["method"] == "subspace") & (rows["shape"] == "point")) | (rows["method"] == "swa"))]
    return sub, refs


def needs(rows: pd.DataFrame, axis: str) -> bool:
    return axis in rows and rows[axis].nunique() > 1
