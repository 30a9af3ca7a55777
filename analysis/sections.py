"""The report's sections, as data: `SECTIONS` is a list of (id, title, function). A function reads the sweep
through a `Context` (the view, its trials with group names, the predictions loaded once, one colour
palette) and adds figures and tables to it, or says why it skips them. A later analysis (corruptions, loss
patterns, probes) adds one function and one line to SECTIONS, touching no other section.

A figure is saved as PNG and SVG with its table (CSV, Markdown) beneath it; every number is at each trial's
main point (analysis.trials.main_points) unless the section says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import (
    calibration,
    claims,
    compare,
    corruptions,
    diversity,
    ensembles,
    landscape,
    patterns,
    plots,
    probes,
    tables,
)
from analysis.predictions import Probs, load_core
from analysis.tables import Table
from analysis.trials import caption, fmt_value, label, setting_axes, untrained, with_groups


@dataclass
class Item:
    """One figure or table of the report; `skipped` says why it is absent. A figure's `table` is shown
    folded beneath it."""

    kind: str                      # "figure" | "table"
    name: str
    title: str
    caption: str = ""
    files: list[Path] = field(default_factory=list)
    skipped: str = ""
    note: str = ""
    table: Table | None = None
    section: str = ""
    problems: list[str] = field(default_factory=list)  # layout problems (plots.layout_problems), when checked
    legend: list[str] = field(default_factory=list)    # the figure's legend entries


@dataclass
class Section:
    id: str
    title: str
    build: Callable[[Context], None]
    intro: str = ""


class Context:
    """What a section function works with, and where it puts its items."""

    def __init__(self, view: Any, folder: Path, bins: int = 15, n_subsets: int = 10, max_points: int = 12,
                 seed: int = 0, hue: str | None = None, check_layout: bool = False):
        self.view, self.folder, self.bins, self.hue = view, folder, bins, hue
        self.n_subsets, self.max_points, self.seed, self.check_layout = n_subsets, max_points, seed, check_layout
        self.trials = with_groups(view.trials)
        self.settings = setting_axes(self.trials)
        self.probs: Probs = load_core(view)
        self.palette = plots.Palette()
        self.items: list[Item] = []
        self.section = ""
        self._rows: pd.DataFrame | None = None

    @property
    def rows(self) -> pd.DataFrame:
        """compare.paper_rows, computed once."""
        if self._rows is None:
            self._rows = compare.paper_rows(self.view)
        return self._rows

    def used(self, keys: Any = None, groups: Any = None) -> pd.DataFrame:
        """The trials a figure summarises: given trial keys and/or whole groups."""
        t = self.trials
        sel = pd.Series(False, index=t.index)
        if keys is not None:
            sel |= t["trial_key"].isin(set(keys))
        if groups is not None:
            sel |= t["group"].isin(set(groups))
        return t[sel]

    def panel_order(self, groups: pd.Series) -> pd.Series:
        """A sort key for panels of groups: setting by setting (in the axes' order), every series of a
        setting together in series order; so a figure cut to MAX_PANELS shows every method."""
        info = self.trials.drop_duplicates("group")
        ranked = info.sort_values([*self.settings, "series_order"], kind="stable")["group"]
        return groups.map({g: i for i, g in enumerate(ranked)})

    def setting_label(self, rows: pd.DataFrame, without: tuple[str, ...] = ()) -> pd.Series:
        """Each row's setting, naming only the setting axes (minus `without`) that vary."""
        axes = [a for a in self.settings if a not in without]
        if not axes or rows.empty:
            return pd.Series("all", index=rows.index)
        return pd.Series([label(r, axes) for r in rows[axes].to_dict("records")], index=rows.index)

    # -- output -----------------------------------------------------------------------------------------
    def figure(self, name: str, title: str, cap: str, make: Callable[[], Any], table: Table | None = None,
               note: str = "") -> None:
        fig = make()
        problems = plots.layout_problems(fig) if self.check_layout else []
        files = plots.save(fig, self.folder / "figures" / name)
        legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        item = Item("figure", name, title, cap, [f.relative_to(self.folder) for f in files], note=note,
                    section=self.section, problems=problems, legend=legend)
        if table is not None:
            item.table = table
            item.files += self._write(table)
        self.items.append(item)

    def table(self, t: Table, note: str = "") -> None:
        self.items.append(Item("table", t.name, t.title, t.caption, self._write(t), note=note, table=t,
                               section=self.section))

    def skip(self, kind: str, name: str, title: str, why: str) -> None:
        self.items.append(Item(kind, name, title, skipped=why, section=self.section))

    def _write(self, t: Table) -> list[Path]:
        d = self.folder / "tables"
        d.mkdir(parents=True, exist_ok=True)
        t.data.to_csv(d / f"{t.name}.csv", index=False)
        (d / f"{t.name}.md").write_text(t.markdown() + "\n")
        return [Path("tables") / f"{t.name}.csv", Path("tables") / f"{t.name}.md"]


def _cells(summary: pd.DataFrame, index: list[str], metrics: tuple[str, ...] = ("accuracy", "nll", "ece")) \
        -> pd.DataFrame:
    """Formatted mean ± std columns of a mean_std frame, indexed by `index`."""
    out = pd.DataFrame({tables.unit(m): [tables.fmt_mean_std(a, b, m) for a, b in
                                         zip(summary[f"{m}_mean"], summary[f"{m}_std"], strict=True)]
                        for m in metrics if f"{m}_mean" in summary})
    out["seeds"] = summary["seeds"].to_numpy()
    out.index = pd.MultiIndex.from_frame(summary[index].astype(str)) if len(index) > 1 else \
        pd.Index(summary[index[0]].astype(str), name=index[0])
    return out


def _percent(d: pd.DataFrame, metric: str) -> pd.DataFrame:
    """mean/std columns of `metric` (in percent for accuracy and ECE, as the tables show them)."""
    scale = 100.0 if metric in tables.PERCENT else 1.0
    out = d.assign(mean=d[f"{metric}_mean"] * scale)
    return out.assign(std=d[f"{metric}_std"] * scale) if f"{metric}_std" in d else out


def _ylabel(metric: str) -> str:
    return f"test {plots.NAMES[metric]}" + (" (%)" if metric in tables.PERCENT else "")


def _panels_by_setting(ctx: Context, summary: pd.DataFrame, x: str, metric: str, xlabel: str,
                       refs: pd.DataFrame | None = None) -> list[plots.Panel]:
    order = dict(zip(summary["series"], summary["series_order"], strict=True))
    if refs is not None:
        order.update(zip(refs["series"], refs["series_order"] + 100, strict=True))
    out = []
    for s, d in summary.groupby("panel", sort=False):
        r = None if refs is None else _percent(refs[refs["panel"] == s], metric)
        out.append(plots.Panel(s if s != "all" else "", _percent(d, metric).rename(columns={x: "x"}), xlabel,
                               _ylabel(metric), r, order))
    return out


# -- sections -----------------------------------------------------------------------------------------------
def results(ctx: Context) -> None:
    t = tables.robustness_table(ctx.view)
    if t.empty:
        ctx.skip("table", "robustness", "Robustness", "no test evaluations")
    else:
        ctx.table(t)
    b = compare.best_of_table(ctx.view)
    if b.empty:
        ctx.skip("table", "best_of_axis", "Best of an axis",
                 f"no axis among {', '.join(compare.BEST_OF)} takes a value other than its default")
    else:
        ctx.table(b)


def forms(ctx: Context) -> None:
    title = "Accuracy of standard training, line, layer-wise line and curve (Wortsman et al., Fig. 3)"
    rows = compare.accuracy_by_form(ctx.view, ctx.rows)
    if rows.empty:
        ctx.skip("figure", "accuracy_by_form", title, "needs standard training and a line or curve in one sweep")
        return
    by_epochs = compare.needs(rows, "epochs")
    rows = rows.assign(panel=ctx.setting_label(rows, ("epochs",) if by_epochs else ()))
    s = compare.summarise(rows, ["panel"] + (["epochs"] if by_epochs else []))
    cap = caption(ctx.used(rows["trial_key"]), "mean ± std over seeds at the main point")
    table = tables.simple_table("accuracy_by_form", title, cap, s, _cells(s, ["series", "panel"] +
                                                                           (["epochs"] if by_epochs else [])))
    if by_epochs:
        ctx.figure("accuracy_by_form", title, cap, lambda: plots.lines(
            _panels_by_setting(ctx, s, "epochs", "accuracy", "training epochs"), title, cap, ctx.palette,
            integer_x=True), table)
    else:
        ctx.figure("accuracy_by_form", title, cap, lambda: plots.dots(
            s, "accuracy", title, cap, ctx.palette, "test accuracy (%)", scale=100), table)


def endpoints_m(ctx: Context) -> None:
    title = "Accuracy of the subspace centre against the number of endpoints m, with SWA (Wortsman et al., Fig. 4)"
    sub, refs = compare.centre_by_m(ctx.view, ctx.rows)
    if sub.empty:
        ctx.skip("figure", "centre_by_m", title, "needs lines or simplexes with two or more endpoint counts m")
        return
    sub = sub.assign(panel=ctx.setting_label(sub, ("endpoints",)))
    refs = refs.assign(panel=ctx.setting_label(refs, ("endpoints",)))
    s = compare.summarise(sub, ["panel", "m"])
    r = compare.summarise(refs, ["panel"])
    cap = caption(ctx.used(pd.concat([sub["trial_key"], refs["trial_key"]])),
                  "centre (midpoint) accuracy, mean ± std over seeds; dashed: standard training and SWA")
    table = tables.simple_table("centre_by_m", title, cap, pd.concat([s, r], ignore_index=True),
                                _cells(pd.concat([s, r.assign(m="—")], ignore_index=True), ["series", "panel", "m"]))
    ctx.figure("centre_by_m", title, cap, lambda: plots.lines(
        _panels_by_setting(ctx, s, "m", "accuracy", "endpoints m", r), title, cap, ctx.palette, integer_x=True),
        table)


def calibration_by_method(ctx: Context) -> None:
    title = "Expected calibration error by method (Wortsman et al., Fig. 5)"
    rows = ctx.rows
    rows = rows[rows["point"] != "early_stop"] if len(rows) else rows
    if rows.empty or rows["series"].nunique() < 2:
        ctx.skip("figure", "ece_by_method", title, "needs two or more methods with test evaluations")
    else:
        rows = rows.assign(panel=ctx.setting_label(rows))
        s = compare.summarise(rows, ["panel"])
        cap = caption(ctx.used(rows["trial_key"]), "ECE at the main point, mean ± std over seeds; (best): the "
                                                   "value picked by validation accuracy")
        table = tables.simple_table("ece_by_method", title, cap, s, _cells(s, ["series", "panel"],
                                                                           ("ece", "accuracy", "nll")))
        ctx.figure("ece_by_method", title, cap, lambda: plots.dots(
            s, "ece", title, cap, ctx.palette, "test ECE (%)", scale=100),
            table)
    t = calibration.calibration_table(ctx.view)
    if t.empty:
        ctx.skip("table", "calibration", "Calibration", "no clean test evaluations")
    else:
        ctx.table(t)
    title = "Reliability diagrams"
    rel = calibration.reliability_curves(ctx.view, ctx.bins, probs=ctx.probs)
    if rel.empty:
        ctx.skip("figure", "reliability", title, "no saved test predictions (save_predictions)")
        return
    info = ctx.trials.drop_duplicates("group").set_index("group")
    rel = rel.assign(_o=rel["group"].map(info["series_order"])).sort_values(["_o", "group_label", "bin"],
                                                                               kind="stable")
    keep, note = plots.shown(rel.sort_values("group", key=ctx.panel_order, kind="stable")["group"])
    cap = caption(ctx.used(groups=rel["group"]))
    table = tables.simple_table("reliability", title, cap, rel.drop(columns=["group", "_o"]),
                                rel.set_index(["group_label", "bin"])[["count", "confidence", "accuracy"]].round(4))
    ctx.figure("reliability", title, cap, lambda: plots.reliability(
        rel[rel["group"].isin(keep)].sort_values("group", key=ctx.panel_order, kind="stable"), cap, note),
        table, note)


def label_noise(ctx: Context) -> None:
    title = "Robustness to label noise (Wortsman et al., Fig. 7)"
    rows = ctx.rows
    if rows.empty or not compare.needs(rows, "label_noise"):
        ctx.skip("figure", "label_noise", title, "needs two or more label_noise values")
        return
    rows = rows.assign(panel=ctx.setting_label(rows, ("label_noise",)))
    s = compare.summarise(rows, ["panel", "label_noise"])
    cap = caption(ctx.used(rows["trial_key"]), "test accuracy at the main point, mean ± std over seeds; "
                                               "(best): picked by validation accuracy per noise rate")
    table = tables.simple_table("label_noise", title, cap, s, _cells(s, ["series", "panel", "label_noise"]))
    ctx.figure("label_noise", title, cap, lambda: plots.lines(
        _panels_by_setting(ctx, s, "label_noise", "accuracy", "fraction of train labels replaced"), title, cap,
        ctx.palette), table)


def ensemble_size(ctx: Context) -> None:
    title = "Ensemble size by member source (Fort et al.)"
    values = ensembles.ensemble_values(ctx.view, n_subsets=ctx.n_subsets, max_points=ctx.max_points,
                                       bins=ctx.bins, seed=ctx.seed, probs=ctx.probs)
    if values.empty:
        why = "no group with 2+ seeds and no trial with 2+ ensemble members or checkpoints"
        ctx.skip("figure", "ensemble_curves", title, why)
        return
    curves = ensembles.ensemble_curves(ctx.view, values=values)
    curves = curves.assign(_o=curves["group"].map(ctx.trials.drop_duplicates("group").set_index("group")
                                                  ["series_order"]))
    curves = curves.sort_values(["_o", "group_label", "source", "k"], kind="stable",
                                key=lambda c: c.map({s: i for i, s in enumerate(ensembles.source_order(
                                    curves["source"]))}) if c.name == "source" else c)
    found = set(values["source"])
    missing = [s for s in ensembles.SOURCES if s not in found]
    note = f"no members from: {', '.join(missing)}" if missing else ""
    cap = caption(ctx.used(values["trial_key"], values.loc[values["source"] == "seeds", "group"]),
                  "mean ± std over random subsets (seeds) or over seeds (the other sources)")
    hue = ctx.hue if ctx.hue in curves.columns else None
    if hue:  # colour by the axis, one panel per group without it, line style per source
        key = ctx.setting_label(curves, (hue,))
        curves = curves.assign(_panel=curves["series"] + np.where(key == "all", "", " · " + key),
                               _series=hue + "=" + curves[hue].map(fmt_value))
    else:
        curves = curves.assign(_panel=curves["group_label"], _series=curves["source"])
    keep, cut = plots.shown(curves.sort_values("group", key=ctx.panel_order, kind="stable")["_panel"])
    acc = curves.pivot_table(index=["group_label", "source"], columns="k", values="accuracy_mean", sort=False)
    acc.columns = [f"k={k}" for k in acc.columns]
    table = tables.simple_table("ensemble_curves", title + ": accuracy (%) against k", cap,
                                curves.drop(columns=["group", "_o", "_panel", "_series"]), (100 * acc).round(2))
    for metric, name in (("accuracy", "ensemble_curves"), ("nll", "ensemble_curves_nll")):
        panels = []
        for p in keep:
            d = curves[curves["_panel"] == p]
            data = _percent(d, metric).rename(columns={"k": "x"})
            data = data.assign(series=data["_series"], **({"style": data["source"]} if hue else {}))
            panels.append(plots.Panel(p, data, "ensemble size k", _ylabel(metric)))
        ctx.figure(name, f"{title}: {plots.NAMES[metric]}", cap, lambda panels=panels, metric=metric: plots.lines(
            panels, f"{title}: test {plots.NAMES[metric]} against ensemble size", cap, ctx.palette,
            source=not hue, note="; ".join(t for t in (note, cut) if t), integer_x=True),
            table if metric == "accuracy" else None, "; ".join(t for t in (note, cut) if t))


def accuracy_vs_diversity(ctx: Context) -> None:
    title = "Accuracy against diversity (Fort et al.)"
    a = diversity.accuracy_vs_diversity(ctx.view, probs=ctx.probs)
    if a.empty:
        ctx.skip("figure", "accuracy_vs_diversity", title,
                 "no trial with a second function to compare (seeds, checkpoints or ensemble members)")
        return
    a = a.assign(_o=a["group"].map(ctx.trials.drop_duplicates("group").set_index("group")["series_order"]))
    a = a.sort_values(["_o", "group_label"], kind="stable")
    keep, cut = plots.shown(a.sort_values("group", key=ctx.panel_order, kind="stable")["group"])
    cap = caption(ctx.used(a["trial_key"]), "diversity = fraction of test predictions that differ from the final "
                                            "solution / its error rate")
    summary = a.groupby(["group_label", "source"], sort=False).agg(
        pairs=("accuracy", "size"), accuracy=("accuracy", "mean"), disagreement=("disagreement", "mean"),
        diversity=("diversity", "mean")).round(4)
    table = tables.simple_table("accuracy_vs_diversity", title + ": means per source", cap + " · means over pairs",
                                a.drop(columns=["group", "_o"]), summary)
    ctx.figure("accuracy_vs_diversity", title, cap,
               lambda: plots.scatter(a[a["group"].isin(keep)].sort_values("group", key=ctx.panel_order, kind="stable"),
                                     cap, ctx.palette, cut), table, cut)


def trajectories(ctx: Context) -> None:
    title = "Cosine similarity of weights across checkpoints and seeds"
    w = diversity.weight_similarity(ctx.view)
    if w.empty:
        ctx.skip("figure", "weights_cosine", title, "no weights recorded (set weight_projection > 0)")
    else:
        used = ctx.used(w.index.get_level_values("trial_key"))
        cap = caption(used)
        note = f"group: {used['group_label'].iloc[0]}"
        ctx.figure("weights_cosine", title, cap,
                   lambda: plots.matrix(w, title, f"{cap} · {note}", "cosine similarity", "viridis", None, 1.0),
                   note=note)
    title = "Prediction disagreement across checkpoints and seeds"
    d = diversity.prediction_disagreement(ctx.view, probs=ctx.probs)
    if d.empty:
        ctx.skip("figure", "prediction_disagreement", title, "no per-epoch predictions (set epoch_predictions: true)")
    else:
        used = ctx.used(d.index.get_level_values("trial_key"))
        cap = caption(used)
        note = f"group: {used['group_label'].iloc[0]}"
        ctx.figure("prediction_disagreement", title, cap, lambda: plots.matrix(
            d, title, f"{cap} · {note}", "fraction of test labels that differ", "magma", 0.0), note=note)
    title = "t-SNE of prediction trajectories"
    t = diversity.tsne_trajectories(ctx.view, probs=ctx.probs, seed=ctx.seed)
    if t.empty:
        ctx.skip("figure", "tsne_trajectories", title,
                 "fewer than 3 checkpoints with predictions (set epoch_predictions: true)")
    else:
        cap = caption(ctx.used(t["trial_key"]))
        ctx.figure("tsne_trajectories", title, cap, lambda: plots.tsne(t, cap, ctx.palette),
                   note=f"group: {t['group_label'].iloc[0]}")


def landscapes(ctx: Context) -> None:
    title = "Accuracy and NLL along α (lines and curves), and the barrier between independently trained nets"
    a = landscape.alpha_curves(ctx.view)
    if a.empty:
        ctx.skip("figure", "landscape_alpha", title, "no line or curve trials with α-grid evaluations")
    else:
        info = ctx.trials.drop_duplicates("group").set_index("group")
        a = a.assign(series=np.where(a["role"] == "barrier", "Barrier: " + a["group"].map(info["series"]),
                                     a["group"].map(info["series"])),
                     series_order=a["group"].map(info["series_order"]),
                     panel=ctx.setting_label(a[["group"]].join(info[ctx.settings], on="group")))
        cap = caption(ctx.used(groups=a["group"]), "mean ± std over seeds")
        note = "" if (a["role"] == "barrier").any() else \
            "no barrier: no independently trained pair (method: independent) in this sweep"
        keep, cut = plots.shown(a["panel"], "settings", plots.MAX_PANELS // 2)
        panels = []
        for p in keep:
            d = a[a["panel"] == p]
            for metric in ("accuracy", "nll"):
                panels.append(plots.Panel(p if p != "all" else "", _percent(d, metric).rename(columns={"alpha": "x"}),
                                          "α", _ylabel(metric),
                                          order=dict(zip(d["series"], d["series_order"], strict=True))))
        cells = a.pivot_table(index=["series", "panel"], columns="alpha", values="accuracy_mean", sort=False)
        cells.columns = [f"α={c:g}" for c in cells.columns]
        table = tables.simple_table("landscape_alpha", "Test accuracy (%) along α", cap,
                                    a.drop(columns=["group"]), (100 * cells).round(2))
        ctx.figure("landscape_alpha", title, cap, lambda: plots.lines(
            panels, title, cap, ctx.palette, ncols=4 if len(panels) > 2 else 2,
            note="; ".join(t for t in (note, cut) if t)), table, "; ".join(t for t in (note, cut) if t))
    title = "Simplex (m = 3) heat map"
    s = landscape.simplex_grid(ctx.view)
    if s.empty:
        ctx.skip("figure", "landscape_simplex", title, "no simplex trials with 3 endpoints")
        return
    s = s.assign(_o=s["group"].map(ctx.trials.drop_duplicates("group").set_index("group")["series_order"]))
    s = s.sort_values(["_o", "group_label"], kind="stable")
    keep, cut = plots.shown(s.sort_values("group", key=ctx.panel_order, kind="stable")["group"])
    cap = caption(ctx.used(groups=s["group"]))
    table = tables.simple_table("landscape_simplex", "Test accuracy over the m = 3 simplex", cap,
                                s.drop(columns=["group", "_o"]),
                                s.set_index(["group_label", "c0", "c1", "c2"])[["accuracy_mean", "n"]].round(4))
    ctx.figure("landscape_simplex", title, cap, lambda: plots.simplex(
        s[s["group"].isin(keep)].sort_values("group", key=ctx.panel_order, kind="stable"), cap, note=cut), table, cut)


def diverged_or_untrained(ctx: Context) -> None:
    """The sweep's trials that learned nothing: those whose training loss went non-finite (diverged: left out of
    everything else, the view holds completed trials only) and those that completed with a finite loss but a
    test accuracy at chance (trials.at_chance: a real result, kept in the means). No item when there are none."""
    everything = ctx.view.base.trials
    if everything.empty:
        return
    mine = everything["sweep"].isin(set(ctx.trials["sweep"]))
    diverged = everything["status"] == "diverged"
    chance = untrained(everything)
    d = everything[mine & (diverged | chance)]
    if d.empty:
        return
    d = d.assign(outcome=["diverged" if s == "diverged" else "at chance" for s in d["status"]])
    cols = [c for c in ("name", "outcome", "diverged_epoch", "chance_accuracy", "epochs", "method", "shape",
                        "optimizer", "lr", "seed", "trial_key") if c in d]
    data = d[cols].sort_values(["outcome", "diverged_epoch", "name"]).reset_index(drop=True)
    n_div, n_chance = int((d["outcome"] == "diverged").sum()), int((d["outcome"] == "at chance").sum())
    cap = caption(d, "diverged: non-finite training loss, excluded from every mean, figure and table of this "
                     "report; at chance: finite loss but main-point test accuracy no better than chance (the "
                     "most common test class's share, chance_accuracy) plus 5% of the way to perfect, kept in them")
    ctx.table(tables.simple_table("diverged", f"Diverged or untrained trials ({n_div} diverged, {n_chance} at "
                                  "chance)", cap, data, (data.set_index("name") if "name" in data else data)
                                  .round(4).astype(object).fillna("")))  # no "nan" epoch for a trial at chance


SECTIONS: list[Section] = [
    Section("claims", "Claims scorecard", claims.section,
            "Each claim of the seed papers, judged on this sweep by paired differences over seeds (same other "
            "axes) with a 95% t interval: holds, not shown (the interval includes 0), reversed, or cannot be "
            "judged (and why). analysis/claims.py: CLAIMS, docs/analysis.md."),
    Section("diverged", "Diverged or untrained trials", diverged_or_untrained,
            "Trials whose training loss became NaN or infinite: they stopped at that epoch (their epochs rows are "
            "kept) and are excluded from the means below. Trials that finished at chance (a finite loss, but a "
            "test accuracy no better than always answering the most common class): kept in the means."),
    Section("results", "Main results", results,
            "Accuracy and ECE at each trial's main point by label noise, and the best-of-an-axis baselines."),
    Section("forms", "Standard, line, layer-wise line, curve", forms),
    Section("endpoints", "Centre accuracy against m", endpoints_m),
    Section("calibration", "Calibration", calibration_by_method),
    Section("label-noise", "Label noise", label_noise),
    Section("ensembles", "Ensemble size", ensemble_size,
            "Independent seeds against members from one run: checkpoints, subspace endpoints and samples, "
            "SWA snapshots, MIMO heads, and Fort et al.'s samples around one solution."),
    Section("diversity", "Accuracy against diversity", accuracy_vs_diversity),
    Section("trajectories", "Trajectories", trajectories),
    Section("landscape", "Landscape", landscapes),
    Section("corruptions", "Corruption robustness", corruptions.report_section,
            "The main point and main ensemble on corrupted test sets, by corruption and severity."),
    Section("loss-patterns", "Loss patterns", patterns.section,
            "Planes in weight space fitted to binary pictures (method mpo): heat maps and the colour gap."),
    Section("probes", "Landscape probes", probes.section,
            "Random hyperplanes (Goldilocks), Hessian spectra, stiffness and connecting curves (Fort et al.)."),
]
