"""Figures (matplotlib, object-oriented `Figure`: renders with Agg/SVG and never touches pyplot's global
backend, so it works headless and inside notebooks alike).

Every figure is small multiples: one panel per group or setting (at most MAX_PANELS; the caption says how
many are shown), a legend outside the panels naming only what varies within them (series, sources), and
the same colour for a series or a source in every figure of a report (`Palette`). The title names the
sweep and how many trials and seeds the figure summarises. `layout_problems` checks a figure from
matplotlib's layout engine: legends inside the canvas and off the data, titles not overlapping.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox
from matplotlib.tri import Triangulation

from analysis.landscape import barycentric_xy

MAX_PANELS = 32
NAMES = {"accuracy": "accuracy", "nll": "NLL", "brier": "Brier", "ece": "ECE"}
SOURCE_NAME = {"seeds": "independent seeds", "checkpoints": "checkpoints of one run", "endpoints": "subspace endpoints",
               "samples": "subspace samples", "snapshots": "SWA snapshots", "members": "MIMO heads",
               "random": "random subspace", "dropout": "dropout subspace", "gaussian": "diagonal Gaussian",
               "pca": "PCA Gaussian"}
# Colours that mean the same thing in every report: sources of ensemble members, and the methods' families
# (by the start of their series name). Anything else takes the next free colour of tab20.
SOURCE_COLORS = {"seeds": "#1f77b4", "checkpoints": "#7f7f7f", "endpoints": "#2ca02c", "samples": "#17becf",
                 "snapshots": "#ff7f0e", "members": "#8c564b", "random": "#d62728", "dropout": "#9467bd",
                 "gaussian": "#e377c2", "pca": "#bcbd22"}
# A family's shades: a second series of the family takes the next one.
SERIES_COLORS = [("Barrier", ["#000000", "#555555"]),
                 ("Standard (opt. early stop)", ["#8c8c8c", "#b0b0b0"]),
                 ("Standard", ["#222222", "#5a5a5a", "#8c8c8c", "#b0b0b0"]),
                 ("Dropout", ["#9467bd", "#c5b0d5"]), ("Label smoothing", ["#e377c2", "#f7b6d2"]),
                 ("Line (layer-wise)", ["#17becf", "#9edae5"]), ("Line", ["#1f77b4", "#aec7e8"]),
                 ("Curve", ["#8c564b", "#c49c94"]), ("Simplex (layer-wise", ["#98df8a", "#2ca02c"]),
                 ("Simplex", ["#2ca02c", "#98df8a", "#1b7a1b", "#5fd35f"]),
                 ("SWA (high", ["#ff7f0e", "#ffbb78"]), ("SWA (cyclic", ["#ffbb78", "#ff7f0e"]),
                 ("Ensemble of", ["#d62728", "#ff9896"]), ("MIMO", ["#bcbd22", "#dbdb8d"])]
_TAB20 = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd",
          "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d",
          "#17becf", "#9edae5"]
PANEL = (3.3, 2.5)     # inches per panel
BANDS = 6              # ± std bands are drawn when a panel has at most this many lines (else: in the table)
FONT = 8


class Palette:
    """A colour per name, fixed the first time it is asked for: one Palette per report keeps every series
    and source the same colour in all its figures. A series takes the first free shade of its family
    (SERIES_COLORS, by the start of its name), else the first free tab20 colour; sources (which never share
    a figure with series) always take SOURCE_COLORS."""

    def __init__(self) -> None:
        self.colors: dict[str, str] = {}
        self.sources: dict[str, str] = {}

    def __call__(self, name: str, source: bool = False) -> str:
        if source:
            if name not in self.sources:
                free = [c for c in _TAB20 if c not in set(self.sources.values()) | set(SOURCE_COLORS.values())]
                self.sources[name] = SOURCE_COLORS.get(name) or (free[0] if free else "#7f7f7f")
            return self.sources[name]
        if name not in self.colors:
            taken = set(self.colors.values())
            shades = next((c for prefix, c in SERIES_COLORS if name.startswith(prefix)), [])
            # no family: the strong tab20 colours first, then their light partners
            free = [c for c in shades if c not in taken] or [c for c in _TAB20[::2] + _TAB20[1::2] if c not in taken]
            self.colors[name] = free[0] if free else _TAB20[len(self.colors) % 20]
        return self.colors[name]


@dataclass
class Panel:
    """One panel of a line figure: `data` has columns series, x, mean and optionally std (a band) and
    style (a line style's name); `refs` (series, mean) are drawn as horizontal dashed lines."""

    title: str
    data: pd.DataFrame
    xlabel: str = ""
    ylabel: str = ""
    refs: pd.DataFrame | None = None
    order: dict[str, float] = field(default_factory=dict)


def shown(keys: Sequence[str], what: str = "groups", limit: int = MAX_PANELS) -> tuple[list[str], str]:
    """The first `limit` keys (callers order them setting by setting, every series of a setting together),
    and a note when not all are shown."""
    keys = list(dict.fromkeys(keys))
    if len(keys) <= limit:
        return keys, ""
    return keys[:limit], (f"{limit} of {len(keys)} {what} shown: the first settings, every method in each (the "
                          f"panel titles name them); every one is in the table beneath")


def wrap(text: str, inches: float, size: float = FONT) -> str:
    """Wrap text to about the width of `inches` at font `size`."""
    width = max(12, int(inches * 72 / (0.55 * size)))
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _legend_size(labels: Sequence[str], height: float) -> tuple[int, float]:
    """(columns, width in inches) for a legend of `labels` beside a figure `height` inches tall."""
    rows = max(1, int((height - 0.8) / (FONT * 1.45 / 72)))
    ncol = max(1, -(-len(labels) // rows))
    longest = max((len(s) for s in labels), default=0)
    return ncol, ncol * (longest * FONT * 0.55 / 72 + 0.45)


def _figure(title: str, caption: str, n: int, ncols: int | None = None, panel: tuple[float, float] = PANEL,
            legend: Sequence[str] = (), note: str = "", **kw: object) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of n panels (ncols wide), room for a legend of `legend` on the right, and a
    title that wraps to the figure's width."""
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    height = panel[1] * nrows + 0.9
    lcols, lwidth = _legend_size(legend, height) if legend else (0, 0.0)
    width = max(panel[0] * ncols + lwidth, 5.5)
    text = "\n".join(t for t in (title, caption, note) if t)
    over = width - lwidth  # the title spans the panels, not the legend beside them
    text = wrap(text, over, FONT + 1)
    height += 0.16 * text.count("\n")
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **kw)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(text, fontsize=FONT + 1, x=over / 2 / width)
    fig._basin_legend_cols = lcols  # noqa: SLF001 - how many columns the legend was sized for
    return fig, axes[:n]


def _legend(fig: Figure, handles: list, labels: list[str], title: str = "") -> None:
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=FONT, title=title or None,
                   title_fontsize=FONT, ncols=getattr(fig, "_basin_legend_cols", 1) or 1, frameon=False)


def _style(ax: object, xlabel: str, ylabel: str, title: str, width: float) -> None:
    """Labels, ticks and grid; the title wrapped to the width of the axes (a panel less its y labels)."""
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(wrap(title, width - 0.7), fontsize=FONT)


# (line style, marker) per `style` value: 12 distinct ones
STYLES = [(ls, m) for m in ("o", "s", "^") for ls in ("-", "--", ":", "-.")]


def lines(panels: Sequence[Panel], title: str, caption: str, palette: Palette, source: bool = False,
          ncols: int | None = None, note: str = "", integer_x: bool = False, legend_title: str = "") -> Figure:
    """Small multiples of mean ± std lines: colour per series (a source's colour when `source`), line style
    per `style` value, references as dashed horizontal lines."""
    series: dict[str, float] = {}
    styles: list[str] = []
    for p in panels:
        for s in p.data["series"]:
            series.setdefault(s, p.order.get(s, len(series)))
        if p.refs is not None:
            for s in p.refs["series"]:
                series.setdefault(s, p.order.get(s, len(series)))
        if "style" in p.data:
            styles += [s for s in dict.fromkeys(p.data["style"]) if s not in styles]
    names = sorted(series, key=lambda s: series[s])
    labels = [SOURCE_NAME.get(s, s) if source else s for s in names] + styles
    bands = max((p.data["series"].nunique() for p in panels), default=0) <= BANDS
    fig, axes = _figure(title, caption, len(panels), ncols, legend=labels, note=note)
    for ax, p in zip(axes, panels, strict=True):
        data = p.data if "style" in p.data else p.data.assign(style="")
        for (s, st), d in data.groupby(["series", "style"], sort=False):
            d = d.sort_values("x")
            ls, marker = STYLES[styles.index(st) % len(STYLES)] if st else ("-", "o")
            mean = d["mean"].to_numpy(float)
            ax.plot(d["x"], mean, ls, marker=marker, ms=2.5, lw=1.2, color=palette(s, source))
            if "std" in d and bands:
                std = np.nan_to_num(d["std"].to_numpy(float))
                ax.fill_between(d["x"], mean - std, mean + std, color=palette(s, source), alpha=0.15, lw=0)
        if p.refs is not None:
            for _, r in p.refs.iterrows():
                ax.axhline(r["mean"], ls="--", lw=1, color=palette(r["series"], source))
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _style(ax, p.xlabel, p.ylabel, p.title, PANEL[0])
    handles = [Line2D([], [], color=palette(s, source), marker="o", ms=3,
                      ls="--" if any(p.refs is not None and s in set(p.refs["series"]) and s not in
                                     set(p.data["series"]) for p in panels) else "-") for s in names]
    handles += [Line2D([], [], color="#444444", ls=STYLES[i % len(STYLES)][0], marker=STYLES[i % len(STYLES)][1],
                       ms=3) for i in range(len(styles))]
    _legend(fig, handles, labels, legend_title)
    return fig


def dots(data: pd.DataFrame, value: str, title: str, caption: str, palette: Palette, xlabel: str,
         panel: str = "panel", note: str = "", scale: float = 1.0) -> Figure:
    """Horizontal dot plot, one row per series (mean ± std over seeds), one panel per `panel` value: the
    series names are the tick labels, so there is no legend to cover anything."""
    keys, cut = shown(list(dict.fromkeys(data[panel])), "settings")
    names = list(dict.fromkeys(data.sort_values("series_order", kind="stable")["series"]))
    height = max(1.6, 0.2 * len(names) + 0.9)
    ncols = min(len(keys), 3)
    longest = max(len(s) for s in names)
    fig, axes = _figure(title, caption, len(keys), ncols, panel=(3.0 + longest * FONT * 0.55 / 72 / ncols, height),
                        note="; ".join(t for t in (note, cut) if t), sharey=True)
    ypos = {s: i for i, s in enumerate(names)}
    for ax, k in zip(axes, keys, strict=True):
        d = data[data[panel] == k]
        for _, r in d.iterrows():
            std = r.get(f"{value}_std", np.nan)
            ax.errorbar(r[f"{value}_mean"] * scale, ypos[r["series"]],
                        xerr=None if pd.isna(std) else std * scale, fmt="o", ms=4, capsize=2,
                        color=palette(r["series"]))
        ax.set_yticks(range(len(names)), names, fontsize=FONT)
        ax.set_ylim(len(names) - 0.5, -0.5)
        _style(ax, xlabel, "", k if len(keys) > 1 or k != "all" else "", fig.get_figwidth() / ncols)
    return fig


def reliability(df: pd.DataFrame, caption: str, note: str = "") -> Figure:
    """Reliability diagram per group: accuracy per confidence bin against the diagonal (seeds pooled)."""
    groups = list(dict.fromkeys(df["group"]))
    fig, axes = _figure("Reliability: accuracy against confidence per bin", caption, len(groups),
                        panel=(2.7, 2.6), legend=["accuracy", "gap to confidence"], note=note)
    for ax, g in zip(axes, groups, strict=True):
        d = df[df["group"] == g]
        width = (d["hi"] - d["lo"]).to_numpy()
        ax.bar(d["lo"], d["accuracy"].fillna(0), width=width, align="edge", edgecolor="black", lw=0.4,
               color="#1f77b4")
        acc, conf = d["accuracy"].fillna(0).to_numpy(), d["confidence"].fillna(0).to_numpy()
        ax.bar(d["lo"], np.abs(conf - acc), bottom=np.minimum(acc, conf), width=width, align="edge", fill=False,
               edgecolor="red", hatch="////", lw=0)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        _style(ax, "confidence", "accuracy",
               f"{d['group_label'].iloc[0]} · ECE {100 * d['ece'].iloc[0]:.2f}% · {d['seeds'].iloc[0]} seed(s)",
               2.7)
    _legend(fig, [Patch(color="#1f77b4"), Patch(fill=False, edgecolor="red", hatch="////", lw=0)],
            ["accuracy", "gap to confidence"])
    return fig


def simplex(df: pd.DataFrame, caption: str, metric: str = "accuracy", note: str = "") -> Figure:
    """Heat map of a metric over the m = 3 simplex (mean over seeds), one panel per group, one colour scale."""
    groups = list(dict.fromkeys(df["group"]))
    fig, axes = _figure(f"Simplex (m = 3): test {NAMES[metric]} over the triangle of endpoints", caption,
                        len(groups), panel=(2.9, 2.7), note=note)
    vals = df[f"{metric}_mean"].to_numpy(float)
    vmin, vmax = np.nanmin(vals), np.nanmax(vals)
    art = None
    for ax, g in zip(axes, groups, strict=True):
        d = df[df["group"] == g]
        x, y = barycentric_xy(d[["c0", "c1", "c2"]].to_numpy())
        z = d[f"{metric}_mean"].to_numpy(float)
        if len(d) >= 3:
            art = ax.tripcolor(Triangulation(x, y), z, shading="gouraud", vmin=vmin, vmax=vmax, cmap="viridis")
        else:
            art = ax.scatter(x, y, c=z, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.scatter(x, y, s=4, color="white", edgecolors="none")
        for i, (vx, vy) in enumerate([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)]):
            ax.annotate(f"endpoint {i}", (vx, vy), ha="center", va="top" if vy == 0 else "bottom", fontsize=FONT - 1)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(wrap(d["group_label"].iloc[0], 2.6), fontsize=FONT)
    if art is not None:
        fig.colorbar(art, ax=list(axes), shrink=0.8, label=f"test {NAMES[metric]}")
    return fig


def matrix(df: pd.DataFrame, what: str, caption: str, cbar: str, cmap: str = "viridis",
           vmin: float | None = None, vmax: float | None = None) -> Figure:
    """A square (trial, seed, epoch)-indexed matrix as a heat map, trials separated by white lines."""
    n = len(df)
    side = min(9.0, max(3.5, 0.2 * n))  # long trajectories: the matrix gets denser, not larger
    fig, axes = _figure(what, caption, 1, panel=(side + 2.4, side + 0.4))
    ax = axes[0]
    art = ax.imshow(df.to_numpy(float), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(art, ax=ax, label=cbar, shrink=0.8)
    seeds = df.index.get_level_values("seed")
    epochs = df.index.get_level_values("epoch")
    ticks = [f"seed {s} · ep {e}" for s, e in zip(seeds, epochs, strict=True)]
    step = max(1, n // 30)
    ax.set_xticks(range(0, n, step), ticks[::step], rotation=90, fontsize=FONT - 2)
    ax.set_yticks(range(0, n, step), ticks[::step], fontsize=FONT - 2)
    trials = df.index.get_level_values("trial_key")
    for i in range(1, n):
        if trials[i] != trials[i - 1]:
            ax.axhline(i - 0.5, color="white", lw=1)
            ax.axvline(i - 0.5, color="white", lw=1)
    return fig


def tsne(df: pd.DataFrame, caption: str, palette: Palette) -> Figure:
    """t-SNE of prediction trajectories: a line per trial through its checkpoints (later = larger dots), its
    final ensemble members as crosses in their source's colour."""
    seeds = list(dict.fromkeys(df.sort_values("seed")["seed"]))
    members = [k for k in dict.fromkeys(df["kind"]) if k != "checkpoint"]
    labels = [f"seed {s}" for s in seeds] + [SOURCE_NAME.get(k, k) for k in members]
    group = df["group_label"].iloc[0] if len(df) else ""
    fig, axes = _figure("t-SNE of the softmax outputs along training trajectories", caption, 1,
                        panel=(5.5, 4.5), legend=labels, note=f"group: {group}")
    ax = axes[0]
    marks = ["o", "s", "^", "D", "v", "P", "X", "*"]
    handles = []
    for i, s in enumerate(seeds):
        d = df[(df["seed"] == s) & (df["kind"] == "checkpoint")].sort_values("epoch")
        size = 8 + 40 * (d["epoch"] - d["epoch"].min()) / max(1, d["epoch"].max() - d["epoch"].min())
        ax.plot(d["x"], d["y"], "-", color="#555555", alpha=0.4, lw=0.8)
        ax.scatter(d["x"], d["y"], s=size, marker=marks[i % len(marks)], color=palette("checkpoints", True),
                   edgecolors="black", linewidths=0.3)
        handles.append(Line2D([], [], marker=marks[i % len(marks)], ls="-", color=palette("checkpoints", True)))
    for k in members:
        d = df[df["kind"] == k]
        ax.scatter(d["x"], d["y"], marker="x", s=18, color=palette(k, True))
        handles.append(Line2D([], [], marker="x", ls="", color=palette(k, True)))
    ax.set_xticks([])
    ax.set_yticks([])
    _legend(fig, handles, labels, "trajectory (larger = later)")
    return fig


def scatter(df: pd.DataFrame, caption: str, palette: Palette, note: str = "") -> Figure:
    """Accuracy of each function against its diversity from the trial's final solution (Fort et al.),
    one panel per group, colour per source of the other function."""
    groups = list(dict.fromkeys(df["group"]))
    sources = list(dict.fromkeys(df["source"]))
    labels = [SOURCE_NAME.get(s, s) for s in sources] + ["the solution itself"]
    fig, axes = _figure("Accuracy against diversity from the final solution (Fort et al.)", caption, len(groups),
                        legend=labels, note=note)
    for ax, g in zip(axes, groups, strict=True):
        d = df[df["group"] == g]
        for s, e in d.groupby("source", sort=False):
            x = e["diversity"].replace([np.inf, -np.inf], np.nan)
            ax.scatter(x, e["accuracy"], s=10, alpha=0.7, color=palette(s, True))
        ref = d.drop_duplicates("trial_key")
        ax.scatter(np.zeros(len(ref)), ref["reference_accuracy"], marker="*", s=40, color="black")
        _style(ax, "diversity (disagreement / error)", "test accuracy", d["group_label"].iloc[0], PANEL[0])
    handles = [Line2D([], [], marker="o", ls="", color=palette(s, True)) for s in sources]
    handles.append(Line2D([], [], marker="*", ls="", ms=8, color="black"))
    _legend(fig, handles, labels)
    return fig


def save(fig: Figure, path: str | Path) -> list[Path]:
    """Write `path`.png and `path`.svg; returns both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(".png"), path.with_suffix(".svg")]
    fig.savefig(out[0], dpi=110)
    fig.savefig(out[1])
    return out


# -- checks from the layout engine ---------------------------------------------------------------------------
def _overlap(a: Bbox, b: Bbox, tol: float = 1.0) -> bool:
    return a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol


def layout_problems(fig: Figure, tol: float = 1.0) -> list[str]:
    """What a reader could not read, from the laid-out figure's bounding boxes (display units): a legend
    outside the canvas or over a panel's data area; a title outside the canvas, over another title or over
    a panel's data area; axis labels outside the canvas. Empty when the figure is clean."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # lays the figure out (constrained layout included) without rasterising
    r = fig.canvas.get_renderer()
    canvas = Bbox.from_bounds(0, 0, fig.bbox.width, fig.bbox.height).expanded(1, 1)
    inside = Bbox.from_extents(-tol, -tol, fig.bbox.width + tol, fig.bbox.height + tol)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    out = []
    legends = list(fig.legends) + [ax.get_legend() for ax in axes if ax.get_legend() is not None]
    for i, leg in enumerate(legends):
        bb = leg.get_window_extent(r)
        if not (inside.contains(bb.x0, bb.y0) and inside.contains(bb.x1, bb.y1)):
            out.append(f"legend {i} outside the canvas: {bb.bounds} not in {canvas.bounds}")
        for ax in axes:
            if _overlap(bb, ax.get_window_extent(r), tol):
                out.append(f"legend {i} over the data of panel {ax.get_title()!r}")
    titles = [("figure title", fig._suptitle)] if fig._suptitle is not None else []  # noqa: SLF001
    titles += [(f"panel title {ax.get_title()!r}", ax.title) for ax in axes if ax.get_title()]
    boxes = [(name, t.get_window_extent(r)) for name, t in titles]
    for name, bb in boxes:
        if not (inside.contains(bb.x0, bb.y0) and inside.contains(bb.x1, bb.y1)):
            out.append(f"{name} outside the canvas")
        for ax in axes:
            if _overlap(bb, ax.get_window_extent(r), tol):
                out.append(f"{name} over the data of panel {ax.get_title()!r}")
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            if _overlap(ba, bb, tol):
                out.append(f"{a} overlaps {b}")
        for j, leg in enumerate(legends):
            if _overlap(ba, leg.get_window_extent(r), tol):
                out.append(f"{a} overlaps legend {j}")
    for ax in axes:
        for lab in (ax.xaxis.label, ax.yaxis.label):
            if lab.get_text():
                bb = lab.get_window_extent(r)
                if not (inside.contains(bb.x0, bb.y0) and inside.contains(bb.x1, bb.y1)):
                    out.append(f"axis label {lab.get_text()!r} of panel {ax.get_title()!r} outside the canvas")
    return out
