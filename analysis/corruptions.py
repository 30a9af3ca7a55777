"""Corruption robustness: each method's main point and main ensemble on corrupted test sets (evals rows with a
`corruption` and `severity`), as Hendrycks & Dietterich score them and as the subspaces paper plots them
(its Figure 6: accuracy against severity per method).

- `corruption_evals(r)`: the final test evals of every trial's main point and main ensemble (trials columns
  `main_point` / `main_ensemble`), clean (severity 0) and corrupted, with the trial's group and a series label.
- `robustness_curves(r)`: per series, corruption ("mean" = the mean over corruptions) and severity, mean and
  std over seeds of accuracy, NLL and ECE. The mean over corruptions is taken per trial first, so its std is
  over seeds.
- `corruption_table(r)`: a Table with the summary (clean accuracy, mean corruption accuracy, NLL and ECE, and
  the mean accuracy at each severity) and the accuracy at every corruption x severity.
- `severity_figure(curves, caption)`: accuracy against severity, one line per series, bands = +- std over seeds;
  the first panel is the mean over corruptions, then one panel per corruption.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import ID
from analysis.tables import CLEAN, Table, View, fmt_mean_std, mark_best, unit
from analysis.trials import as_results, caption, main_point, with_groups

METRICS = ("accuracy", "nll", "ece")
MEAN = "mean"   # the `corruption` of the mean over corruptions


def corruption_evals(results: Any) -> pd.DataFrame:
    """Final test evals (clean and corrupted) of each completed trial's main point and main ensemble."""
    results = as_results(results)
    trials = results.trials
    trials = with_groups(trials[trials["status"] == "completed"] if "status" in trials else trials)
    ev = results.evals
    ev = ev[ev["split"] == "test"]
    if ev.empty or trials.empty:
        return pd.DataFrame()
    ev = ev[ev["epoch"] == ev.groupby(ID)["epoch"].transform("max")]
    cols = ID + ["group", "group_label", "seed", "shape", "method", "main_point", "main_ensemble"]
    ev = ev.merge(trials[[c for c in cols if c in trials]], on=ID)
    main = ev["main_point"].where(ev["main_point"].fillna("") != "",
                                  [main_point(s, m) for s, m in zip(ev["shape"], ev["method"], strict=True)])
    ens = ev["main_ensemble"].fillna("")
    ev = ev.assign(role=np.where(ev["point"] == main, "main", np.where(ev["point"] == ens, "ensemble", "")))
    ev = ev[ev["role"] != ""].copy()
    ev["corruption"] = ev["corruption"].fillna(CLEAN)
    ev["severity"] = ev["severity"].fillna(0).astype(int)
    ev["series"] = ev["group_label"] + " · " + ev["point"]
    return ev.reset_index(drop=True)


def robustness_curves(results: Any = None, ev: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean and std over seeds per series x corruption x severity (corruption "mean": over corruptions;
    "" with severity 0: clean)."""
    ev = corruption_evals(results) if ev is None else ev
    if ev.empty:
        return pd.DataFrame()
    keys = ["group", "series", "point", "role"]
    corrupted = ev[ev["corruption"] != CLEAN]
    per_trial_mean = corrupted.groupby(ID + keys + ["severity"], as_index=False)[list(METRICS)].mean()
    rows = pd.concat([ev, per_trial_mean.assign(corruption=MEAN)], ignore_index=True)
    g = rows.groupby(keys + ["corruption", "severity"], sort=False)
    out = g[list(METRICS)].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["seeds"] = g.size()
    return out.reset_index()


def _cells(d: pd.DataFrame, metric: str) -> list[str]:
    return [fmt_mean_std(m, s, metric) for m, s in zip(d[f"{metric}_mean"], d[f"{metric}_std"], strict=True)]


def corruption_table(results: Any = None, ev: pd.DataFrame | None = None) -> Table:
    """Summary by series (clean accuracy; mean corruption accuracy, NLL and ECE over every corruption and
    severity; mean accuracy per severity) and accuracy per corruption x severity; mean ± std over seeds."""
    ev = corruption_evals(results) if ev is None else ev
    used = ev.drop_duplicates(ID) if len(ev) else ev
    cap = caption(used, "mean ± std over seeds; corrupted columns average every corruption evaluated")
    if ev.empty or not (ev["corruption"] != CLEAN).any():
        return Table("corruptions", "Corruption robustness", cap, pd.DataFrame())
    curves = robustness_curves(ev=ev)
    order = list(dict.fromkeys(ev.sort_values(["group_label", "role"], ascending=[True, False])["series"]))
    # summary: one value per trial (clean, or the mean over every corrupted set), then over seeds
    keys = ["series"]
    corrupted = ev[ev["corruption"] != CLEAN].groupby(ID + keys, as_index=False)[list(METRICS)].mean()
    clean = ev[ev["corruption"] == CLEAN].groupby(ID + keys, as_index=False)[["accuracy"]].mean()
    stats = []
    for name, df, metrics in (("clean", clean, ("accuracy",)), ("corrupted", corrupted, METRICS)):
        g = df.groupby(keys)
        for m in metrics:
            stats.append(pd.DataFrame({"series": g[m].mean().index, "column": f"{name} {unit(m)}",
                                       "metric": m, "mean": g[m].mean().to_numpy(), "std": g[m].std().to_numpy()}))
    sev = curves[curves["corruption"] == MEAN]
    for s in sorted(sev["severity"].unique()):
        d = sev[sev["severity"] == s]
        stats.append(pd.DataFrame({"series": d["series"], "column": f"severity {s} {unit('accuracy')}",
                                   "metric": "accuracy", "mean": d["accuracy_mean"], "std": d["accuracy_std"]}))
    summary = pd.concat(stats, ignore_index=True)
    summary["best"] = mark_best(summary, ["column"])
    summary["text"] = [fmt_mean_std(m, s, k) for m, s, k in zip(summary["mean"], summary["std"], summary["metric"],
                                                                  strict=True)]
    columns = list(dict.fromkeys(summary["column"]))
    cells = summary.pivot(index="series", columns="column", values="text").reindex(index=order, columns=columns)
    bold = summary.pivot(index="series", columns="column", values="best").reindex(index=order, columns=columns)
    views = [View("Mean over corruptions", cells.fillna(""), bold.fillna(False).astype(bool))]
    # accuracy per corruption x severity: rows = corruption-severity, columns = series
    detail = curves[curves["corruption"] != CLEAN].copy()
    detail["row"] = detail["corruption"] + "-" + detail["severity"].astype(str)
    detail["text"] = _cells(detail, "accuracy")
    detail["best"] = mark_best(detail.assign(metric="accuracy", mean=detail["accuracy_mean"]), ["row"])
    rows = list(dict.fromkeys(detail.sort_values(["corruption", "severity"], key=_mean_last)["row"]))
    cells = detail.pivot(index="row", columns="series", values="text").reindex(index=rows, columns=order)
    bold = detail.pivot(index="row", columns="series", values="best").reindex(index=rows, columns=order)
    cells.index.name = "corruption-severity"
    views.append(View(f"{unit('accuracy')} per corruption × severity", cells.fillna(""),
                      bold.fillna(False).astype(bool)))
    data = curves.drop(columns=["group"])
    return Table("corruptions", "Corruption robustness: accuracy, NLL and ECE under corruption", cap, data, views)


def _mean_last(col: pd.Series) -> pd.Series:
    """Sort key: the mean over corruptions after the corruptions themselves."""
    return col.map(lambda v: (1, v) if v == MEAN else (0, v)) if col.name == "corruption" else col


def severity_figure(curves: pd.DataFrame, cap: str, metric: str = "accuracy", palette: Any = None) -> Figure:
    """Metric against severity (0 = clean) per series, mean ± std over seeds: the mean over corruptions, then one
    panel per corruption. Ensembles are dashed. `palette`: the report's (one colour per group in every figure)."""
    from analysis.plots import Palette

    palette = palette or Palette()

    corruptions = [MEAN] + sorted(c for c in curves["corruption"].unique() if c not in (MEAN, CLEAN))
    ncols = min(4, len(corruptions))
    nrows = (len(corruptions) + ncols - 1) // ncols
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows + 1.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)).ravel()
    fig.suptitle(f"Test {metric} against corruption severity (0 = clean)\n{cap}", fontsize=10)
    clean = curves[curves["corruption"] == CLEAN]
    for ax, corruption in zip(axes, corruptions, strict=False):
        d = curves[curves["corruption"] == corruption]
        for series, s in d.groupby("series", sort=False):
            s = pd.concat([clean[clean["series"] == series], s]).sort_values("severity")
            mean, std = s[f"{metric}_mean"].to_numpy(float), np.nan_to_num(s[f"{metric}_std"].to_numpy(float))
            color = palette(str(s["group_label"].iloc[0]) if "group_label" in s else str(s["group"].iloc[0]))
            style = "--" if (s["role"] == "ensemble").all() and s["point"].iloc[0].startswith("ensemble") else "-"
            ax.plot(s["severity"], mean, style, marker="o", ms=3, color=color, label=series)
            ax.fill_between(s["severity"], mean - std, mean + std, color=color, alpha=0.12, lw=0)
        ax.set_title("mean over corruptions" if corruption == MEAN else corruption, fontsize=9,
                     fontweight="bold" if corruption == MEAN else "normal")
        ax.grid(alpha=0.3)
        ax.set_xticks(range(6))
    for ax in axes[len(corruptions):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(metric)
    for ax in axes[-ncols:]:
        ax.set_xlabel("severity")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    return fig


def report_section(ctx: Any) -> None:
    """The report's "Corruption robustness" items (a section in analysis/sections.py); absent when the sweep
    evaluated no corruptions (config `corruptions`)."""
    builder = ctx
    ev = corruption_evals(ctx.view)
    if ev.empty or not (ev["corruption"] != CLEAN).any():
        return
    t = corruption_table(ev=ev)
    builder.table(t)
    curves = robustness_curves(ev=ev)
    builder.figure("corruption_severity", "Accuracy against corruption severity", t.caption,
                   lambda: severity_figure(curves, t.caption, palette=getattr(ctx, "palette", None)))
