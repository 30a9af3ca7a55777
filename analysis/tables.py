"""Tables: mean ± std over seeds, robustness (rows = what was trained and the other settings, columns = label
noise and corruption × severity) and calibration, with the best cell per column marked.

Rows are named by a group's series (analysis.trials: "Standard", "Line (layer-wise)", "SWA (cyclic LR)")
and the setting axes that vary; every number is at each trial's main point (analysis.trials.main_points),
with a trial's early-stopping point (`early_stop`) as a row of its own, "<series> (opt. early stop)".

A `Table` keeps the numbers tidy (`data`, written as CSV) and one or more formatted wide views (written as
Markdown and HTML, best cells in bold). Accuracy and ECE are shown in percent; NLL and Brier as they are.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import ID
from analysis.metrics import METRICS
from analysis.trials import (
    REPLICATE,
    as_results,
    barrier_centres,
    caption,
    fmt_value,
    group_keys,
    main_points,
    setting_axes,
    varying_axes,
    with_groups,
)

HIGHER_IS_BETTER = {"accuracy": True, "nll": False, "brier": False, "ece": False}
PERCENT = {"accuracy", "ece"}
CLEAN = ""
EARLY_STOP = " (opt. early stop)"  # the series of a trial's early-stopping point


@dataclass
class View:
    """A formatted wide table: `cells` (strings) and `bold` (same shape, True where a cell is the best)."""

    title: str
    cells: pd.DataFrame
    bold: pd.DataFrame | None = None


@dataclass
class Table:
    name: str
    title: str
    caption: str
    data: pd.DataFrame
    views: list[View] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"## {self.title}", "", f"*{self.caption}*", ""]
        for v in self.views:
            if v.title:
                out += [f"### {v.title}", ""]
            out += [markdown(v.cells, v.bold), ""]
        return "\n".join(out)

    def html(self, max_rows: int | None = None) -> str:
        """The views as HTML tables (at most max_rows rows each: the CSV has them all)."""
        return "\n".join(f"<h4>{html.escape(v.title)}</h4>\n{to_html(v.cells, v.bold, max_rows)}" if v.title
                         else to_html(v.cells, v.bold, max_rows) for v in self.views)

    @property
    def rows(self) -> int:
        """Rows of the longest view."""
        return max((len(v.cells) for v in self.views), default=0)

    @property
    def empty(self) -> bool:
        return self.data.empty


def _cell(v: Any) -> str:
    return fmt_value(v).replace("|", "\\|")


def markdown(cells: pd.DataFrame, bold: pd.DataFrame | None = None) -> str:
    """A pipe table with the index as leading columns; bold cells wrapped in ** **."""
    idx_names = [n or "" for n in cells.index.names]
    head = idx_names + [str(c) for c in cells.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (key, row) in enumerate(cells.iterrows()):
        key = key if isinstance(key, tuple) else (key,)
        vals = []
        for j, v in enumerate(row):
            s = _cell(v)
            vals.append(f"**{s}**" if bold is not None and bool(bold.iat[i, j]) else s)
        lines.append("| " + " | ".join([_cell(k) for k in key] + vals) + " |")
    return "\n".join(lines)


def to_html(cells: pd.DataFrame, bold: pd.DataFrame | None = None, max_rows: int | None = None) -> str:
    more = len(cells) - max_rows if max_rows is not None and len(cells) > max_rows else 0
    if more:
        cells = cells.iloc[:max_rows]
        bold = None if bold is None else bold.iloc[:max_rows]
    idx_names = [n or "" for n in cells.index.names]
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in idx_names + list(cells.columns))
    body = []
    for i, (key, row) in enumerate(cells.iterrows()):
        key = key if isinstance(key, tuple) else (key,)
        tds = [f"<th>{e(fmt_value(k))}</th>" for k in key]
        for j, v in enumerate(row):
            s = e(fmt_value(v))
            tds.append(f"<td><b>{s}</b></td>" if bold is not None and bool(bold.iat[i, j]) else f"<td>{s}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    note = f"<p class=cap>… {more} more rows in the CSV</p>" if more else ""
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table>" + note


def fmt_mean_std(mean: float, std: float, metric: str, n: int | None = None) -> str:
    """'92.13 ± 0.21' (percent for accuracy/ECE); the ± part is left out when std is undefined (n = 1)."""
    if pd.isna(mean):
        return ""
    scale, digits = (100.0, 2) if metric in PERCENT else (1.0, 4)
    s = f"{mean * scale:.{digits}f}"
    if not pd.isna(std):
        s += f" ± {std * scale:.{digits}f}"
    return s


def unit(metric: str) -> str:
    return f"{metric} (%)" if metric in PERCENT else metric


def mean_std(df: pd.DataFrame, by: Sequence[str], metrics: Iterable[str] = METRICS,
             replicate: str = "seed") -> pd.DataFrame:
    """Mean and sample std (ddof=1) of each metric per `by` group, with n (values), trials and seeds."""
    metrics = [m for m in metrics if m in df.columns]
    g = df.groupby(list(by), dropna=False, sort=True)
    out = g[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["n"] = g.size()
    out["trials"] = g["trial_key"].nunique() if "trial_key" in df else out["n"]
    out["seeds"] = g[replicate].nunique() if replicate in df else out["n"]
    return out.reset_index()


def mark_best(df: pd.DataFrame, by: Sequence[str], metric_col: str = "metric") -> pd.Series:
    """True where `mean` is the best of its `by` group (max for accuracy, min for NLL/Brier/ECE); ties all."""
    best = pd.Series(False, index=df.index)
    for _, d in df.groupby(list(by), dropna=False):
        m = d[metric_col].iloc[0]
        vals = d["mean"].astype(float)
        if vals.notna().any():
            target = vals.max() if HIGHER_IS_BETTER.get(m, True) else vals.min()
            best.loc[d.index] = np.isclose(vals, target, rtol=0, atol=1e-12)
    return best


def final_evals(results: Any, split: str = "test", points: str | Iterable[str] = "main",
                clean_only: bool = False) -> pd.DataFrame:
    """Evals of each completed trial's last epoch, merged with its config. points: 'main' (each trial's
    main point, analysis.trials.main_points), 'all', or a list of point names."""
    results = as_results(results)
    trials = results.trials
    trials = trials[trials["status"] == "completed"] if "status" in trials else trials
    ev = results.evals
    ev = ev[ev["split"] == split]
    if ev.empty:
        return ev.merge(trials, on=ID)
    last = ev.groupby(ID)["epoch"].transform("max")
    ev = ev[ev["epoch"] == last].merge(trials, on=ID, suffixes=("", "_trial"))
    ev["main_point"] = main_points(ev)
    if clean_only:
        ev = ev[(ev["corruption"].fillna(CLEAN) == CLEAN)]
    if isinstance(points, str) and points == "main":
        ev = ev[ev["point"] == ev["main_point"]]
    elif not (isinstance(points, str) and points == "all"):
        ev = ev[ev["point"].isin(list(points))]
    ev = ev.assign(corruption=ev["corruption"].fillna(CLEAN), severity=ev["severity"].fillna(0).astype(int))
    return ev.reset_index(drop=True)


def is_standard(ev: pd.DataFrame) -> pd.Series:
    """Standard training: one network, no dropout, no label smoothing (the paper's early-stopping baseline)."""
    return (ev["method"] == "subspace") & (ev["shape"] == "point") & (ev["dropout"] == 0) \
        & (ev["label_smoothing"] == 0)


def judged_evals(results: Any, split: str = "test", early_stop: str = "standard", clean_only: bool = False,
                 replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """Each trial's main-point evals with the trial's group names (group, series, series_order, setting,
    group_label), and the early-stopping point (`early_stop`) as series "<series> (opt. early stop)": of
    standard training ("standard", the papers' baseline), of every trial ("all") or of none ("none").
    Never where that point is a barrier (trials.barrier_centres)."""
    results = as_results(results)
    ev = final_evals(results, split, "all", clean_only)
    if ev.empty:
        return ev.assign(group="", series="", setting="", group_label="")
    stopped = (ev["point"] == "early_stop") & ~barrier_centres(ev)
    if early_stop == "standard":
        stopped &= is_standard(ev)
    elif early_stop != "all":
        stopped &= False
    ev = ev[(ev["point"] == ev["main_point"]) | stopped]
    names = with_groups(results.trials.merge(ev[ID].drop_duplicates(), on=ID), replicate)
    ev = ev.merge(names[ID + ["group", "series", "series_order", "setting", "group_label"]], on=ID)
    stop = ev["point"] == "early_stop"
    ev["series_order"] = ev["series_order"] + 0.5 * stop
    ev.loc[stop, "series"] = ev.loc[stop, "series"] + EARLY_STOP
    ev.loc[stop, "group_label"] = ev.loc[stop, "group_label"].str.replace(
        r"^([^·]*?)( · |$)", lambda m: m.group(1) + EARLY_STOP + m.group(2), n=1, regex=True)
    ev.loc[stop, "group"] = ev.loc[stop, "group"] + EARLY_STOP
    return ev.reset_index(drop=True)


def _column_label(d: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    def one(r: pd.Series) -> str:
        parts = [f"{a}={fmt_value(r[a])}" for a in axes if a not in ("corruption", "severity")]
        if "corruption" in axes:
            c = r["corruption"]
            parts.append("clean" if c == CLEAN else f"{c}-{int(r['severity'])}" if "severity" in axes else c)
        return " · ".join(parts) or "all"
    return d.apply(one, axis=1) if len(d) else pd.Series([], dtype=str)


def _row_index(d: pd.DataFrame, levels: Sequence[str]) -> pd.MultiIndex | pd.Index:
    cols = [d[c].map(fmt_value) for c in levels]
    if len(cols) == 1:
        return pd.Index(cols[0], name=levels[0])
    return pd.MultiIndex.from_arrays(cols, names=list(levels))


def _wide(cells: pd.DataFrame, metric: str, title: str) -> View:
    d = cells[cells["metric"] == metric]
    text = d.assign(text=[fmt_mean_std(m, s, metric) for m, s in zip(d["mean"], d["std"], strict=True)])
    wide = text.pivot_table(index="row", columns="column", values="text", aggfunc="first", sort=False)
    bold = text.pivot_table(index="row", columns="column", values="best", aggfunc="first",
                            sort=False).reindex_like(wide)
    cols = list(dict.fromkeys(d["column"]))
    return View(title, wide[cols].fillna(""), bold[cols].fillna(False).astype(bool))


def robustness_table(results: Any, rows: Sequence[str] | None = None, columns: Sequence[str] | None = None,
                     metrics: Sequence[str] = ("accuracy", "ece"), split: str = "test",
                     early_stop: str = "standard", replicate: Iterable[str] = REPLICATE) -> Table:
    """Cells: mean ± std over seeds of each metric at each trial's main point (and standard training's
    early-stopping point, a row of its own: judged_evals), rows = the series and the setting axes not in
    `columns`, columns = each metric × label noise (and corruption × severity when any corrupted evaluation
    exists). The best cell of each column is marked. `rows`: axes to show as row labels instead."""
    results = as_results(results)
    ev = judged_evals(results, split, early_stop, replicate=replicate)
    used = results.trials.merge(ev[ID].drop_duplicates(), on=ID) if len(ev) else results.trials.iloc[:0]
    if columns is None:
        columns = ["label_noise"] + (["corruption", "severity"] if (ev["corruption"] != CLEAN).any() else [])
    columns = list(columns)
    keep = [c for c in columns if c not in ("corruption", "severity")]
    if rows is None:
        rows = ["series"] + [a for a in setting_axes(used, replicate) if a not in columns] if len(ev) else []
    rows = list(rows)
    cols_out = ["sweep", "series", *varying_axes(used, replicate), "corruption", "severity", "metric", "mean",
                "std", "n", "trials", "seeds", "best"]
    if ev.empty:
        return Table("robustness", "Robustness", caption(used), pd.DataFrame(columns=cols_out))
    # a row: the trials' group without the column axes (and which of its points)
    ev["row_key"] = group_keys(ev, (*replicate, *keep)) + np.where(ev["point"] == "early_stop", EARLY_STOP, "")
    by = ["sweep", "row_key"] + columns
    stats = mean_std(ev, by, metrics)
    first = ev.drop_duplicates(["row_key"] + columns).set_index(["row_key"] + columns)
    info = [c for c in dict.fromkeys(["series", "series_order", *rows, *varying_axes(used, replicate)])
            if c not in by]
    stats = stats.join(first[info], on=["row_key"] + columns)
    stats = stats.sort_values(["sweep", "series_order", *[r for r in rows if r != "series"], *columns],
                              kind="stable").reset_index(drop=True)
    data = pd.concat([stats.assign(metric=m, mean=stats[f"{m}_mean"], std=stats[f"{m}_std"]) for m in metrics],
                     ignore_index=True)
    data["best"] = mark_best(data, ["sweep"] + columns + ["metric"])
    cells = data.assign(column=_column_label(data, columns))
    index = _row_index(cells, rows) if rows else pd.Index(["all"] * len(cells), name="")
    cells["row"] = list(index)
    parts = [_wide(cells, m, unit(m)) for m in metrics]
    for v in parts:  # one table: each metric's columns side by side
        v.cells.columns = [f"{v.title} · {c}" for c in v.cells.columns]
        v.bold.columns = v.cells.columns
    wide = pd.concat([v.cells for v in parts], axis=1).fillna("")
    bold = pd.concat([v.bold for v in parts], axis=1).reindex_like(wide).fillna(False).astype(bool)
    if isinstance(index, pd.MultiIndex):
        wide.index = pd.MultiIndex.from_tuples(wide.index, names=index.names)
    else:
        wide.index.name = index.name
    bold.index = wide.index
    views = [View("", wide, bold)]
    data = data[[c for c in dict.fromkeys(["sweep", "series", *varying_axes(used, replicate), *columns,
                                           "metric", "mean", "std", "n", "trials", "seeds", "best"])
                 if c in data]]
    title = "Robustness: " + ", ".join(unit(m) for m in metrics) + " by " + (" × ".join(columns) or "—")
    return Table("robustness", title, caption(used, "mean ± std over seeds at each trial's main point, best per "
                                               "column in bold"), data, views)


def calibration_table(results: Any, split: str = "test", points: Iterable[str] | None = None,
                      metrics: Sequence[str] = METRICS, replicate: Iterable[str] = REPLICATE) -> Table:
    """Accuracy, NLL, Brier and ECE (mean ± std over seeds) of each group at its main point, its
    early-stopping point and the ensembles the trainer evaluated (endpoints, samples, snapshots, Fort et
    al.'s samples...); best per column marked. `points`: point names to show instead."""
    results = as_results(results)
    ev = final_evals(results, split, "all", clean_only=True)
    if len(ev):
        main = ev["point"] == ev["main_point"]
        wanted = main | ev["kind"].eq("ensemble") | (ev["kind"].eq("early_stop") & ~barrier_centres(ev)) \
            if points is None else ev["point"].isin(list(points))
        ev = ev.assign(at=np.where(main, ev["point"] + " (main)", ev["point"]),
                       _order=np.select([main, ev["kind"] == "early_stop"], [0, 1], 2))[wanted]
    used = results.trials.merge(ev[ID].drop_duplicates(), on=ID) if len(ev) else results.trials.iloc[:0]
    if ev.empty:
        return Table("calibration", "Calibration", caption(used),
                     pd.DataFrame(columns=["sweep", "series", "setting", "point", "n", "trials", "seeds"]))
    names = with_groups(used, replicate)
    ev = ev.merge(names[ID + ["group", "series", "series_order", "setting"]], on=ID)
    by = ["sweep", "group", "at"]
    data = mean_std(ev, by, metrics)
    first = ev.drop_duplicates(by).set_index(by)
    axes = varying_axes(used, replicate)
    data = data.join(first[["series", "series_order", "setting", "point", "_order", *axes]], on=by)
    data = data.sort_values(["sweep", "series_order", "setting", "_order", "at"]).reset_index(drop=True)
    long = pd.concat([data[by].assign(metric=m, mean=data[f"{m}_mean"], std=data[f"{m}_std"])
                      for m in metrics], ignore_index=True)
    long["best"] = mark_best(long, ["sweep", "metric"])
    levels = ["series"] + (["setting"] if data["setting"].nunique() > 1 else []) + ["at"]
    index = _row_index(data, levels)
    wide = pd.DataFrame({unit(m): [fmt_mean_std(a, b, m) for a, b in zip(data[f"{m}_mean"], data[f"{m}_std"],
                                                                        strict=True)] for m in metrics},
                        index=index)
    bold = pd.DataFrame({unit(m): long.loc[long.metric == m, "best"].to_numpy() for m in metrics}, index=index)
    best = long.pivot_table(index=by, columns="metric", values="best", aggfunc="first").add_suffix("_best")
    data = data.join(best, on=by).drop(columns=["group", "at", "_order"])
    return Table("calibration", "Calibration: accuracy, NLL, Brier and ECE",
                 caption(used, "mean ± std over seeds at the clean test set, best per column in bold"),
                 data, [View("", wide, bold)])


def simple_table(name: str, title: str, cap: str, data: pd.DataFrame, cells: pd.DataFrame | None = None) -> Table:
    """A table whose Markdown view is `cells` (default: the data rounded)."""
    if cells is None:
        cells = data.round(4)
    return Table(name, title, cap, data, [View("", cells)])
