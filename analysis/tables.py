"""Tables: mean ± std over seeds, robustness (rows = method/shape/endpoints/BN, columns = label noise and
corruption × severity) and calibration, with the best cell per column marked.

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
from analysis.trials import REPLICATE, as_results, caption, fmt_value, main_point, varying_axes

HIGHER_IS_BETTER = {"accuracy": True, "nll": False, "brier": False, "ece": False}
PERCENT = {"accuracy", "ece"}
CLEAN = ""


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

    def html(self) -> str:
        return "\n".join(f"<h4>{html.escape(v.title)}</h4>\n{to_html(v.cells, v.bold)}" if v.title
                         else to_html(v.cells, v.bold) for v in self.views)

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


def to_html(cells: pd.DataFrame, bold: pd.DataFrame | None = None) -> str:
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
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table>"


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
    """Evals of each completed trial's last epoch, merged with its config. points: 'main' (see
    trials.main_point), 'all', or a list of point names."""
    results = as_results(results)
    trials = results.trials
    trials = trials[trials["status"] == "completed"] if "status" in trials else trials
    ev = results.evals
    ev = ev[ev["split"] == split]
    if ev.empty:
        return ev.merge(trials, on=ID)
    last = ev.groupby(ID)["epoch"].transform("max")
    ev = ev[ev["epoch"] == last].merge(trials, on=ID, suffixes=("", "_trial"))
    if clean_only:
        ev = ev[(ev["corruption"].fillna(CLEAN) == CLEAN)]
    if isinstance(points, str) and points == "main":
        recorded = ev["main_point"] if "main_point" in ev else pd.Series(None, index=ev.index)
        rule = [main_point(s, m) for s, m in zip(ev["shape"], ev["method"], strict=True)]
        ev = ev[ev["point"] == recorded.fillna(pd.Series(rule, index=ev.index))]
    elif not (isinstance(points, str) and points == "all"):
        ev = ev[ev["point"].isin(list(points))]
    ev = ev.assign(corruption=ev["corruption"].fillna(CLEAN), severity=ev["severity"].fillna(0).astype(int))
    return ev.reset_index(drop=True)


def _row_label(d: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    if not axes:
        return pd.Series("all", index=d.index)
    return d[list(axes)].apply(lambda r: ", ".join(f"{a}={fmt_value(r[a])}" for a in axes), axis=1)


def _column_label(d: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    def one(r: pd.Series) -> str:
        parts = [f"{a}={fmt_value(r[a])}" for a in axes if a not in ("corruption", "severity")]
        if "corruption" in axes:
            c = r["corruption"]
            parts.append("clean" if c == CLEAN else f"{c}-{int(r['severity'])}" if "severity" in axes else c)
        return " · ".join(parts) or "all"
    return d.apply(one, axis=1) if len(d) else pd.Series([], dtype=str)


def _wide(cells: pd.DataFrame, metric: str, index: list[str], title: str) -> View:
    d = cells[cells["metric"] == metric]
    text = d.assign(text=[fmt_mean_std(m, s, metric) for m, s in zip(d["mean"], d["std"], strict=True)])
    wide = text.pivot_table(index=index, columns="column", values="text", aggfunc="first", sort=False)
    bold = text.pivot_table(index=index, columns="column", values="best", aggfunc="first",
                            sort=False).reindex_like(wide)
    cols = list(dict.fromkeys(d["column"]))
    return View(title, wide[cols].fillna(""), bold[cols].fillna(False).astype(bool))


def robustness_table(results: Any, rows: Sequence[str] | None = None, columns: Sequence[str] | None = None,
                     metrics: Sequence[str] = ("accuracy", "ece"), split: str = "test",
                     points: str | Iterable[str] = "main", replicate: Iterable[str] = REPLICATE) -> Table:
    """Cells: mean ± std over seeds of each metric at each trial's main point, rows = the varying config
    axes (method, shape, endpoints, BN, ...), columns = label noise (and corruption × severity when any
    corrupted evaluation exists). The best cell of each column (per metric) is marked."""
    results = as_results(results)
    ev = final_evals(results, split, points)
    used = results.trials.merge(ev[ID].drop_duplicates(), on=ID) if len(ev) else results.trials.iloc[:0]
    if columns is None:
        columns = ["label_noise"] + (["corruption", "severity"] if (ev["corruption"] != CLEAN).any() else [])
    if rows is None:
        rows = [a for a in varying_axes(used, replicate) if a not in columns] or (["shape"] if len(ev) else [])
    rows, columns = list(rows), list(columns)
    multi = ev["sweep"].nunique() > 1
    by = ["sweep"] + rows + columns
    if ev.empty:
        data = pd.DataFrame(columns=by + ["metric", "mean", "std", "n", "trials", "seeds", "best"])
        return Table("robustness", "Robustness", caption(used), data)
    stats = mean_std(ev, by, metrics)
    long = []
    for m in metrics:
        long.append(stats[by + ["n", "trials", "seeds"]].assign(
            metric=m, mean=stats[f"{m}_mean"], std=stats[f"{m}_std"]))
    data = pd.concat(long, ignore_index=True)
    data["best"] = mark_best(data, ["sweep"] + columns + ["metric"])
    data = data[by + ["metric", "mean", "std", "n", "trials", "seeds", "best"]]
    cells = data.assign(row=_row_label(data, (["sweep"] if multi else []) + rows),
                        column=_column_label(data, columns))
    index = ["row"]
    views = [_wide(cells, m, index, unit(m)) for m in metrics]
    for v in views:
        v.cells.index.name = ", ".join((["sweep"] if multi else []) + rows) or ""
        v.bold.index = v.cells.index
    title = "Robustness: " + ", ".join(unit(m) for m in metrics) + " by " + (" × ".join(columns) or "—")
    return Table("robustness", title, caption(used, "mean ± std over seeds, best per column in bold"),
                 data, views)


def calibration_table(results: Any, split: str = "test", points: Iterable[str] | None = None,
                      metrics: Sequence[str] = METRICS, replicate: Iterable[str] = REPLICATE) -> Table:
    """Accuracy, NLL, Brier and ECE (mean ± std over seeds) of each group at its main point and the
    subspace ensembles the trainer evaluated; best per column marked."""
    results = as_results(results)
    ev = final_evals(results, split, "all", clean_only=True)
    if len(ev):
        main = ev["point"] == ev["shape"].map(main_point)
        wanted = main | ev["kind"].eq("ensemble") if points is None else ev["point"].isin(list(points))
        ev = ev[wanted]
    used = results.trials.merge(ev[ID].drop_duplicates(), on=ID) if len(ev) else results.trials.iloc[:0]
    axes = varying_axes(used, replicate) if len(used) else []
    multi = len(ev) and ev["sweep"].nunique() > 1
    by = ["sweep"] + axes + ["point"]
    if ev.empty:
        return Table("calibration", "Calibration", caption(used),
                     pd.DataFrame(columns=by + ["n", "trials", "seeds"]))
    data = mean_std(ev, by, metrics)
    long = pd.concat([data[by].assign(metric=m, mean=data[f"{m}_mean"], std=data[f"{m}_std"], n=data["n"])
                      for m in metrics], ignore_index=True)
    long["best"] = mark_best(long, ["sweep", "metric"])
    long["row"] = _row_label(long, (["sweep"] if multi else []) + axes + ["point"])
    wide = pd.DataFrame({unit(m): [fmt_mean_std(a, b, m) for a, b in
                                   zip(long.loc[long.metric == m, "mean"], long.loc[long.metric == m, "std"],
                                       strict=True)]
                         for m in metrics}, index=long.loc[long.metric == metrics[0], "row"])
    bold = pd.DataFrame({unit(m): long.loc[long.metric == m, "best"].to_numpy() for m in metrics},
                        index=wide.index)
    data = data.merge(long.pivot_table(index=by, columns="metric", values="best", aggfunc="first")
                      .add_suffix("_best").reset_index(), on=by, how="left")
    wide.index.name = ", ".join((["sweep"] if multi else []) + axes + ["point"])
    return Table("calibration", "Calibration: accuracy, NLL, Brier and ECE",
                 caption(used, "mean ± std over seeds at the clean test set, best per column in bold"),
                 data, [View("", wide, bold)])


def simple_table(name: str, title: str, cap: str, data: pd.DataFrame, cells: pd.DataFrame | None = None) -> Table:
    """A table whose Markdown view is `cells` (default: the data rounded)."""
    if cells is None:
        cells = data.round(4)
    return Table(name, title, cap, data, [View("", cells)])
