"""Loss patterns (`method: mpo`, Skorokhodov & Burtsev): heat maps of the fitted planes beside their target
pictures, and the gap in accuracy between black and white cells against a random mask's fill probability,
BatchNorm on against off (the paper's Figure 4).

Reads the evals rows the method writes (trainers/methods/mpo.py): kind "cell" (one per cell of the grown
grid, coords = (x, y), `colour` black/white inside the picture and "" in the margin), kind "colour" (points
black and white: each colour's mean) and kind "gap" (black − white). A random mask's replicates differ in
`seed` and `mpo_mask_seed`: both are replicate fields here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis import plots
from analysis.load import ID
from analysis.tables import fmt_mean_std, mean_std, simple_table
from analysis.trials import as_results, caption, label, varying_axes, with_groups

REPLICATE = ("seed", "mpo_mask_seed")
MASK = "random"
TARGET = ListedColormap(["white", "black", "#d9d9d9"])  # white cell, black cell, margin


def _final(results: Any, kinds: tuple[str, ...], split: str | None) -> pd.DataFrame:
    """Last-epoch evals rows of the given kinds (one split, or all) of completed mpo trials, with the
    trials' config, `group` and `group_label` (replicates: seed and mask seed)."""
    results = as_results(results)
    trials = results.trials
    trials = trials[(trials["status"] == "completed") & (trials["method"] == "mpo")] if len(trials) else trials
    if trials.empty:
        return pd.DataFrame()
    ev = results.evals
    ev = ev[ev["kind"].isin(kinds)]
    if split is not None:
        ev = ev[ev["split"] == split]
    if ev.empty:
        return pd.DataFrame()
    ev = ev[ev["epoch"] == ev.groupby(ID)["epoch"].transform("max")]
    groups = with_groups(trials.merge(ev[ID].drop_duplicates(), on=ID), REPLICATE)
    return ev.merge(groups, on=ID, suffixes=("", "_trial")).reset_index(drop=True)


def cell_maps(results: Any) -> pd.DataFrame:
    """One row per cell, split and mpo trial: x, y, colour, the metrics, the trial's config and group."""
    ev = _final(results, ("cell",), None)
    if ev.empty:
        return ev
    xy = np.stack(ev["coords"].to_list()).astype(int)
    return ev.assign(x=xy[:, 0], y=xy[:, 1], colour=ev["colour"].fillna(""))


def colour_gaps(results: Any, split: str = "test") -> pd.DataFrame:
    """One row per mpo trial: the mean accuracy and NLL of its black and white cells, and the gap
    (black − white), with the trial's config and group."""
    ev = _final(results, ("colour", "gap"), split)
    if ev.empty:
        return ev
    wide = ev.pivot_table(index=ID, columns="point", values=["accuracy", "nll"])
    wide.columns = [f"{p}_{m}" for m, p in wide.columns]
    keep = ev.drop_duplicates(ID).drop(columns=["point", "kind", "accuracy", "nll", "brier", "ece", "coords",
                                                "colour"])
    return keep.merge(wide.reset_index(), on=ID).reset_index(drop=True)


def gap_curves(results: Any, split: str = "test") -> pd.DataFrame:
    """Random masks: mean ± std over replicates of the gap and of each colour's accuracy per fill
    probability and series (the other varying axes, e.g. batchnorm)."""
    g = colour_gaps(results, split)
    if g.empty:
        return g
    g = g[g["mpo_pattern"] == MASK]
    if g["mpo_fill"].nunique() < 2:
        return pd.DataFrame()
    axes = varying_axes(g, REPLICATE, exclude=("mpo_fill",))
    g = g.assign(series=[label(r, axes) for _, r in g[axes].iterrows()] if axes else "all")
    metrics = ["gap_accuracy", "black_accuracy", "white_accuracy"]
    out = mean_std(g, ["sweep", "series", "mpo_fill"], metrics)
    return out.sort_values(["sweep", "series", "mpo_fill"]).reset_index(drop=True)


# -- figures ----------------------------------------------------------------------------------------------
def _grid(d: pd.DataFrame, column: str) -> tuple[np.ndarray, list[float]]:
    """A cell column as an image (rows: y from top to bottom) and its imshow extent."""
    xs, ys = np.arange(d["x"].min(), d["x"].max() + 1), np.arange(d["y"].max(), d["y"].min() - 1, -1)
    img = np.full((len(ys), len(xs)), np.nan)
    img[ys[0] - d["y"].to_numpy(), d["x"].to_numpy() - xs[0]] = d[column].to_numpy(float)
    return img, [xs[0] - 0.5, xs[-1] + 0.5, ys[-1] - 0.5, ys[0] + 0.5]


def heat_maps(cells: pd.DataFrame, caption: str, max_rows: int = 6) -> Figure:
    """Per trial (the first replicate of each group, at most `max_rows` groups spread evenly over them): the
    target picture, then loss and accuracy over the plane on train and test data, the picture outlined."""
    firsts = cells.sort_values(["group_label", *REPLICATE]).drop_duplicates("group")["trial_key"].tolist()
    keys = [firsts[i] for i in sorted(set(np.linspace(0, len(firsts) - 1, min(max_rows, len(firsts))).round()
                                          .astype(int)))]
    panels = [("train", "nll"), ("test", "nll"), ("train", "accuracy"), ("test", "accuracy")]
    fig, axes = plots._figure("Loss patterns: target and fitted plane", caption, n=(1 + len(panels)) * len(keys),
                              ncols=1 + len(panels), panel=(2.6, 2.5))
    axes = axes.reshape(len(keys), -1)
    for row, key in zip(axes, keys, strict=True):
        d = cells[cells["trial_key"] == key]
        test = d[d["split"] == "test"]
        cap = float(test["mpo_cap"].iloc[0])
        target, extent = _grid(test.assign(t=test["colour"].map({"white": 0, "black": 1, "": 2})), "t")
        inside = test[test["colour"] != ""]
        box = (inside["x"].min() - 0.5, inside["y"].min() - 0.5, inside["x"].max() - inside["x"].min() + 1,
               inside["y"].max() - inside["y"].min() + 1)
        row[0].imshow(target, cmap=TARGET, vmin=0, vmax=2, extent=extent, interpolation="nearest")
        row[0].set_title(f"target: {test['mpo_pattern'].iloc[0]}", fontsize=8)
        row[0].set_ylabel("\n".join([*test["group_label"].iloc[0].split(", "), f"seed={test['seed'].iloc[0]}"]),
                          fontsize=6)
        for ax, (split, metric) in zip(row[1:], panels, strict=True):
            s = d[d["split"] == split]
            if s.empty:
                ax.set_visible(False)
                continue
            img, extent = _grid(s, metric)
            loss = metric == "nll"
            art = ax.imshow(img, cmap="magma" if loss else "magma_r", vmin=0, vmax=2 * cap if loss else 1,
                            extent=extent, interpolation="nearest")
            ax.add_patch(Rectangle(box[:2], box[2], box[3], fill=False, ec="#33aa33", lw=0.8))
            ax.set_title(f"{'loss (CE)' if loss else 'accuracy'} [{split}]", fontsize=8)
            fig.colorbar(art, ax=ax, shrink=0.8, extend="max" if loss else "neither")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def gap_figure(curves: pd.DataFrame, caption: str) -> Figure:
    """The paper's Figure 4: the black − white test accuracy gap against the fill probability (mean ± std
    over replicates), one line per series; beside it each colour's accuracy (black solid, white dashed)."""
    fig, axes = plots._figure("Loss patterns: fitting random masks", caption, n=2, ncols=2, panel=(5.0, 4.0))
    palette = plots.Palette()
    colors = {s: palette(str(s)) for s in curves["series"].unique()}
    for series, d in curves.groupby("series", sort=False):
        p = d["mpo_fill"].to_numpy(float)
        axes[0].errorbar(p, d["gap_accuracy_mean"], yerr=np.nan_to_num(d["gap_accuracy_std"].to_numpy(float)),
                         marker="o", ms=4, capsize=3, color=colors[series], label=series)
        for col, style in (("black", "-"), ("white", "--")):
            axes[1].errorbar(p, d[f"{col}_accuracy_mean"], yerr=np.nan_to_num(d[f"{col}_accuracy_std"]),
                             fmt=style, marker="o", ms=3, capsize=2, color=colors[series],
                             label=f"{series}: {col} cells")
    axes[0].axhline(0, color="gray", lw=0.8)
    axes[0].set_ylabel("test accuracy gap, black − white cells")
    axes[1].set_ylabel("mean test accuracy of the cells")
    for ax in axes:
        ax.set_xlabel("fill probability (share of black cells)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


# -- the report section -----------------------------------------------------------------------------------
def section(b: Any) -> None:
    """The report's "Loss patterns" section (analysis/sections.py; `b` is its Context); nothing for a sweep
    without mpo trials."""
    if "method" not in b.trials or not (b.trials["method"] == "mpo").any():
        return
    title = "Loss patterns: fitted heat maps beside their targets"
    cells = cell_maps(b.view)
    if cells.empty:
        b.skip("figure", "loss_patterns", title, "no mpo trials with heat maps")
        return
    used = b.trials[b.trials["trial_key"].isin(set(cells["trial_key"]))]
    cap = caption(used)
    b.figure("loss_patterns", title, cap, lambda: heat_maps(cells, cap))
    gaps = colour_gaps(b.view)
    summary = mean_std(gaps, ["group_label"], ["black_accuracy", "white_accuracy", "gap_accuracy"],
                       replicate="seed")
    view = summary.set_index("group_label")[[]]
    for m in ("black_accuracy", "white_accuracy", "gap_accuracy"):
        view[m.replace("_accuracy", " (%)")] = [fmt_mean_std(a, s, "accuracy") for a, s in
                                                zip(summary[f"{m}_mean"], summary[f"{m}_std"], strict=True)]
    view["trials"] = summary["trials"].to_numpy()
    b.table(simple_table("loss_patterns", "Loss patterns: test accuracy of black and white cells", cap +
                         " · mean ± std over replicates", summary, view))
    title = "Loss patterns: accuracy gap against fill probability (Figure 4)"
    curves = gap_curves(b.view)
    if curves.empty:
        b.skip("figure", "loss_patterns_gap", title, "no random-mask mpo trials with 2+ fill probabilities")
        return
    used = gaps[(gaps["mpo_pattern"] == MASK)]
    cap = caption(used)
    b.figure("loss_patterns_gap", title, cap, lambda: gap_figure(curves, cap))
    wide = curves.assign(cell=[fmt_mean_std(a, s, "accuracy") for a, s in
                               zip(curves["gap_accuracy_mean"], curves["gap_accuracy_std"], strict=True)])
    wide = wide.pivot(index="series", columns="mpo_fill", values="cell")
    wide.columns = [f"fill {c:g}" for c in wide.columns]
    b.table(simple_table("loss_patterns_gap", "Test accuracy gap (%), black − white cells, by fill probability",
                         cap + " · mean ± std over replicates", curves, wide))
