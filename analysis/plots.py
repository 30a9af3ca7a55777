"""Figures (matplotlib, object-oriented `Figure`: renders with Agg/SVG and never touches pyplot's global
backend, so it works headless and inside notebooks alike). Every figure's title names the sweep and how
many trials and seeds it summarises (the caption argument, from analysis.trials.caption)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.tri import Triangulation

from analysis.landscape import barycentric_xy
from analysis.metrics import METRICS
from analysis.trials import fmt_value

NAMES = {"accuracy": "accuracy", "nll": "NLL", "brier": "Brier", "ece": "ECE"}
SOURCE_STYLE = {"seeds": "-", "samples": "--", "checkpoints": ":", "endpoints": "-."}
SOURCE_NAME = {"seeds": "independent seeds", "samples": "subspace samples", "checkpoints": "checkpoints",
               "endpoints": "subspace endpoints"}


def _figure(what: str, caption: str, ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 4.0),
            **kw: object) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **kw)).ravel()
    fig.suptitle(f"{what}\n{caption}", fontsize=10)
    return fig, axes


def _colors(values: Sequence[object]) -> dict[object, tuple[float, ...]]:
    from matplotlib import colormaps

    uniq = list(dict.fromkeys(values))
    cmap = colormaps["tab10" if len(uniq) <= 10 else "viridis"]
    return {v: cmap(i if len(uniq) <= 10 else i / max(1, len(uniq) - 1)) for i, v in enumerate(uniq)}


def save(fig: Figure, path: str | Path) -> list[Path]:
    """Write `path`.png and `path`.svg; returns both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(".png"), path.with_suffix(".svg")]
    fig.savefig(out[0], dpi=110)
    fig.savefig(out[1])
    return out


def ensemble_curves(curves: pd.DataFrame, caption: str, hue: str | None = None,
                    metrics: Sequence[str] = METRICS) -> Figure:
    """Metric against ensemble size k: colour by `hue` (a config axis; default the group), line style by
    source (seeds / samples / checkpoints / endpoints), bands = ± std."""
    fig, axes = _figure("Ensemble size", caption, ncols=2, nrows=(len(metrics) + 1) // 2)
    key = hue if hue and hue in curves.columns else "group_label"
    colors = _colors(curves[key].map(fmt_value))
    for (source, _group), d in curves.groupby(["source", "group"], sort=False):
        d = d.sort_values("k")
        value = fmt_value(d[key].iloc[0])
        name = f"{SOURCE_NAME.get(source, source)}: {d['group_label'].iloc[0]}"
        for ax, m in zip(axes, metrics, strict=False):
            mean, std = d[f"{m}_mean"].to_numpy(float), np.nan_to_num(d[f"{m}_std"].to_numpy(float))
            ax.plot(d["k"], mean, SOURCE_STYLE.get(source, "-"), marker="o", ms=3, color=colors[value],
                    label=name)
            ax.fill_between(d["k"], mean - std, mean + std, color=colors[value], alpha=0.15, lw=0)
    for ax, m in zip(axes, metrics, strict=False):
        ax.set_xlabel("ensemble size k")
        ax.set_ylabel(NAMES[m])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7)
    return fig


def alpha_curves(df: pd.DataFrame, caption: str, metrics: Sequence[str] = ("accuracy", "nll")) -> Figure:
    """Metrics along α for each line/curve group (solid) and the straight line between two independently
    trained models (dashed, the barrier), mean ± std over seeds."""
    fig, axes = _figure("Along the subspace (α)", caption, ncols=len(metrics))
    colors = _colors(df["group_label"])
    for (role, _group), d in df.groupby(["role", "group"], sort=False):
        d = d.sort_values("alpha")
        lab = d["group_label"].iloc[0] + (" (independent pair: barrier)" if role == "independent" else "")
        for ax, m in zip(axes, metrics, strict=False):
            mean, std = d[f"{m}_mean"].to_numpy(float), np.nan_to_num(d[f"{m}_std"].to_numpy(float))
            ax.plot(d["alpha"], mean, "--" if role == "independent" else "-", marker=".",
                    color="black" if role == "independent" else colors[d["group_label"].iloc[0]], label=lab)
            ax.fill_between(d["alpha"], mean - std, mean + std, alpha=0.15, lw=0,
                            color="black" if role == "independent" else colors[d["group_label"].iloc[0]])
    for ax, m in zip(axes, metrics, strict=False):
        ax.set_xlabel("α")
        ax.set_ylabel(f"test {NAMES[m]}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if not (df["role"] == "independent").any():
        axes[0].text(0.01, 0.01, "no independently trained pair recorded: barrier not shown",
                     transform=axes[0].transAxes, fontsize=7, color="gray")
    return fig


def simplex(df: pd.DataFrame, caption: str, metric: str = "accuracy", max_groups: int = 4) -> Figure:
    """Heat map of a metric over the m = 3 simplex (mean over seeds), one panel per group."""
    groups = list(dict.fromkeys(df["group"]))[:max_groups]
    fig, axes = _figure(f"Simplex (m = 3): test {NAMES[metric]}", caption, ncols=len(groups),
                        size=(4.6, 4.2))
    vals = df[f"{metric}_mean"].to_numpy(float)
    vmin, vmax = np.nanmin(vals), np.nanmax(vals)
    for ax, g in zip(axes, groups, strict=False):
        d = df[df["group"] == g]
        x, y = barycentric_xy(d[["c0", "c1", "c2"]].to_numpy())
        z = d[f"{metric}_mean"].to_numpy(float)
        if len(d) >= 3:
            art = ax.tripcolor(Triangulation(x, y), z, shading="gouraud", vmin=vmin, vmax=vmax, cmap="viridis")
        else:
            art = ax.scatter(x, y, c=z, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.scatter(x, y, s=6, color="white", edgecolors="none")
        for i, (vx, vy) in enumerate([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)]):
            ax.annotate(f"endpoint {i}", (vx, vy), ha="center", va="top" if vy == 0 else "bottom", fontsize=8)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(d["group_label"].iloc[0], fontsize=9)
        fig.colorbar(art, ax=ax, shrink=0.7, label=NAMES[metric])
    return fig


def matrix(df: pd.DataFrame, what: str, caption: str, cbar: str, cmap: str = "viridis",
           vmin: float | None = None, vmax: float | None = None) -> Figure:
    """A square (trial, seed, epoch)-indexed matrix as a heat map, trials separated by white lines."""
    n = len(df)
    side = min(11.0, 0.25 * n)  # long trajectories: the matrix gets denser, not larger
    fig, axes = _figure(what, caption, size=(max(4.5, side + 2.5), max(4.0, side + 1.5)))
    ax = axes[0]
    art = ax.imshow(df.to_numpy(float), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(art, ax=ax, label=cbar)
    seeds = df.index.get_level_values("seed")
    epochs = df.index.get_level_values("epoch")
    ticks = [f"seed {s} · ep {e}" for s, e in zip(seeds, epochs, strict=True)]
    step = max(1, n // 30)
    ax.set_xticks(range(0, n, step), ticks[::step], rotation=90, fontsize=6)
    ax.set_yticks(range(0, n, step), ticks[::step], fontsize=6)
    trials = df.index.get_level_values("trial_key")
    for i in range(1, n):
        if trials[i] != trials[i - 1]:
            ax.axhline(i - 0.5, color="white", lw=1)
            ax.axvline(i - 0.5, color="white", lw=1)
    return fig


def tsne(df: pd.DataFrame, caption: str) -> Figure:
    """t-SNE of prediction trajectories: a line per trial through its checkpoints (later = larger), its
    subspace samples as crosses."""
    fig, axes = _figure("t-SNE of prediction trajectories", caption, size=(6.0, 5.0))
    ax = axes[0]
    colors = _colors(df["trial_key"])
    for key, d in df.groupby("trial_key", sort=False):
        c = d[d["kind"] == "checkpoint"].sort_values("epoch")
        name = f"{d['group_label'].iloc[0]}, seed {d['seed'].iloc[0]}"
        ax.plot(c["x"], c["y"], "-", color=colors[key], alpha=0.5, lw=1)
        size = 10 + 40 * (c["epoch"] - c["epoch"].min()) / max(1, c["epoch"].max() - c["epoch"].min())
        ax.scatter(c["x"], c["y"], s=size, color=colors[key], label=name)
        s = d[d["kind"] == "sample"]
        if len(s):
            ax.scatter(s["x"], s["y"], marker="x", color=colors[key], s=25)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, title="trajectory (x: subspace samples)", title_fontsize=7)
    return fig


def accuracy_vs_diversity(df: pd.DataFrame, caption: str) -> Figure:
    """Accuracy of each function against its diversity from the trial's final solution (Fort et al.)."""
    fig, axes = _figure("Accuracy vs diversity", caption, size=(6.0, 4.5))
    ax = axes[0]
    colors = _colors(df["source"])
    for source, d in df.groupby("source", sort=False):
        x = d["diversity"].replace([np.inf, -np.inf], np.nan)
        ax.scatter(x, d["accuracy"], s=14, alpha=0.7, color=colors[source], label=source)
    ref = df.drop_duplicates("trial_key")
    ax.scatter(np.zeros(len(ref)), ref["reference_accuracy"], marker="*", s=60, color="black",
               label="reference (final)")
    ax.set_xlabel("diversity: fraction of predictions changed / (1 - reference accuracy)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def reliability(df: pd.DataFrame, caption: str, max_groups: int = 6) -> Figure:
    """Reliability diagram per group: accuracy per confidence bin against the diagonal (pooled seeds)."""
    groups = list(dict.fromkeys(df["group"]))[:max_groups]
    ncols = min(3, len(groups))
    nrows = (len(groups) + ncols - 1) // ncols
    fig, axes = _figure("Reliability", caption, ncols=ncols, nrows=nrows, size=(3.8, 3.6))
    for ax, g in zip(axes, groups, strict=False):
        d = df[df["group"] == g]
        width = (d["hi"] - d["lo"]).to_numpy()
        ax.bar(d["lo"], d["accuracy"].fillna(0), width=width, align="edge", edgecolor="black", lw=0.5,
               label="accuracy")
        ax.bar(d["lo"], (d["confidence"] - d["accuracy"]).fillna(0), bottom=d["accuracy"].fillna(0),
               width=width, align="edge", color="red", alpha=0.3, label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{d['group_label'].iloc[0]}\nECE {100 * d['ece'].iloc[0]:.2f}% · "
                     f"{d['seeds'].iloc[0]} seed(s)", fontsize=8)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="upper left")
    return fig
