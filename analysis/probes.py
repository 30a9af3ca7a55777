"""Landscape probes and the studies built on them (Fort et al., seed 002), from the `probes` and `evals`
tables: accuracy of training on random hyperplanes against their dimension (per initialisation radius) with
the Goldilocks measures of the initialisation, the top Hessian eigenvalues against the number of classes, the
class stiffness matrix and stiffness against input distance, and the loss along a learned connecting curve
against the straight line between the same two solutions. `section` adds them to a report (analysis/report.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import ID
from analysis.plots import _figure
from analysis.tables import final_evals, mean_std, simple_table
from analysis.trials import as_results, caption, label, trials_of, varying_axes, with_groups
from trainers.config import DATASET_CLASSES, FIELDS

AXES = ["sweep", "group", "group_label"]


def _colors(values: list[Any]) -> dict[Any, tuple[float, ...]]:
    """A colour per value of a numeric axis (radius, classes): tab10, or viridis beyond ten values."""
    from matplotlib import colormaps

    uniq = list(dict.fromkeys(values))
    cmap = colormaps["tab10" if len(uniq) <= 10 else "viridis"]
    return {v: cmap(i if len(uniq) <= 10 else i / max(1, len(uniq) - 1)) for i, v in enumerate(uniq)}


def _probes(results: Any, probe: str) -> pd.DataFrame:
    """Rows of one probe at each trial's last epoch, with the trial's config, `group` and `group_label`."""
    results = as_results(results)
    p = results.probes
    p = p[p["probe"] == probe] if len(p) else p
    if p.empty:
        return pd.DataFrame()
    p = p[p["epoch"] == p.groupby(ID)["epoch"].transform("max")]
    t = with_groups(trials_of(results.trials, p))
    axes = varying_axes(t, exclude=[f for f in FIELDS if f.startswith("probe")])  # labels without probe settings
    t["group_label"] = [label(r, axes) for _, r in t[axes].iterrows()] if axes else "all"
    t["classes"] = [n or DATASET_CLASSES.get(d, 10) for n, d in zip(t["num_classes"], t["dataset"], strict=True)]
    return p.merge(t, on=ID, suffixes=("", "_trial"))


# -- random hyperplanes (Goldilocks zone) ---------------------------------------------------------------------
def hyperplane_accuracy(results: Any, split: str = "test") -> pd.DataFrame:
    """Mean ± std over seeds of the accuracy of hyperplane trials (their trained point), per radius and d."""
    ev = final_evals(results, split, ["point"], clean_only=True)
    ev = ev[ev["method"] == "hyperplane"] if len(ev) else ev
    if ev.empty:
        return pd.DataFrame()
    return mean_std(ev, ["sweep", "hyperplane_radius", "hyperplane_dim"], ["accuracy", "nll"])


def goldilocks_measures(results: Any) -> pd.DataFrame:
    """Mean ± std over seeds of Tr(H)/‖H‖, the fraction of positive eigenvalues on a random hyperplane and the
    loss, per group and point; `hyperplane_radius` is set for hyperplane trials, which are grouped by radius
    only (their initialisation w₀, the point `origin`, does not depend on d)."""
    p = _probes(results, "goldilocks")
    if p.empty:
        return p
    metrics = ["trace_ratio", "positive_fraction", "loss"]
    # w₀ (`origin`) depends on the seed and radius, not on d: its probes repeat across d, count them once
    p = p[~p.duplicated(["sweep", "method", "seed", "hyperplane_radius", "point", "trace_ratio", "loss"])]
    hp = p["method"] == "hyperplane"
    parts = [mean_std(p[hp].assign(group_label="hyperplane"), ["sweep", "group_label", "point", "hyperplane_radius"],
                      metrics) if hp.any() else None,
             mean_std(p[~hp], ["sweep", "group_label", "point"], metrics) if (~hp).any() else None]
    return pd.concat([x for x in parts if x is not None], ignore_index=True)


def hyperplane_figure(acc: pd.DataFrame, gold: pd.DataFrame, cap: str) -> Figure:
    """Accuracy against d per radius; beside it, the Goldilocks measures against the radius."""
    gold = gold[gold["hyperplane_radius"].notna()] if len(gold) and "hyperplane_radius" in gold else pd.DataFrame()
    n = 2 if len(gold) else 1
    fig, axes = _figure("Training on random hyperplanes: accuracy against dimension d", cap, n, ncols=n,
                        panel=(5.0, 4.0))
    colors = _colors(sorted(acc["hyperplane_radius"].unique()))
    for r, d in acc.groupby("hyperplane_radius"):
        d = d.sort_values("hyperplane_dim")
        axes[0].errorbar(d["hyperplane_dim"], d["accuracy_mean"], yerr=np.nan_to_num(d["accuracy_std"].to_numpy(float)),
                         marker="o", ms=4, capsize=2, color=colors[r], label=f"radius {r:g} × init")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("hyperplane dimension d")
    axes[0].set_ylabel("test accuracy (trained point)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if len(gold):
        ax, ax2 = axes[1], axes[1].twinx()
        for point, style in (("origin", "-"), ("point", ":")):
            d = gold[gold["point"] == point].sort_values("hyperplane_radius")
            where = "at the initialisation w₀" if point == "origin" else "at the trained point"
            if len(d):
                ax.errorbar(d["hyperplane_radius"], d["trace_ratio_mean"], fmt=style, marker="o", ms=4, color="C0",
                            yerr=np.nan_to_num(d["trace_ratio_std"].to_numpy(float)), label=f"Tr(H)/‖H‖ {where}")
                ax2.plot(d["hyperplane_radius"], d["positive_fraction_mean"], style, marker="s", ms=3, color="C3",
                         label=f"positive eigenvalues {where}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("radius (× the initialisation's norm)")
        ax.set_ylabel("Tr(H)/‖H‖ on a random hyperplane", color="C0")
        ax2.set_ylabel("fraction of positive eigenvalues", color="C3")
        ax2.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    return fig


# -- Hessian spectrum ----------------------------------------------------------------------------------------
def outliers(eigenvalues: np.ndarray) -> int:
    """How many eigenvalues stand out: the position of the largest ratio λᵢ/λᵢ₊₁ among the positive top ones."""
    e = np.asarray(eigenvalues, dtype=float)
    e = e[e > 0]
    if len(e) < 3:
        return len(e)
    return int(np.argmax(e[:-1] / e[1:]) + 1)


def hessian_spectra(results: Any) -> pd.DataFrame:
    """One row per Hessian probe and eigenvalue rank (1 = largest): the eigenvalue, normalised by the largest,
    with the trial's number of classes and the estimated number of outliers."""
    p = _probes(results, "hessian")
    if p.empty:
        return p
    p = p.assign(outliers=[outliers(e) for e in p["eigenvalues"]], top=[e[0] for e in p["eigenvalues"]])
    rows = p.explode("eigenvalues").rename(columns={"eigenvalues": "eigenvalue"})
    rows["eigenvalue"] = rows["eigenvalue"].astype(float)
    rows["rank"] = rows.groupby(ID + ["point"]).cumcount() + 1
    rows["relative"] = rows["eigenvalue"] / rows["top"]
    return rows[ID + ["point", "kind", "group", "group_label", "classes", "seed", "rank", "eigenvalue", "relative",
                      "outliers", "trace", "loss"]].reset_index(drop=True)


def hessian_figure(spec: pd.DataFrame, cap: str) -> Figure:
    fig, axes = _figure("Top Hessian eigenvalues against the number of classes C", cap, 2, ncols=2,
                        panel=(5.0, 4.0))
    classes = sorted(spec["classes"].unique())
    colors = _colors(classes)
    for (c, *_), d in spec.groupby(["classes", "group", "point"], sort=False):  # a line per group and point
        d = d.groupby("rank")["relative"].mean()
        axes[0].plot(d.index, d.to_numpy(), marker="o", ms=2, lw=1, alpha=0.7, color=colors[c])
    for c in classes:
        axes[0].plot([], [], color=colors[c], label=f"C = {c}")
        axes[0].axvline(c - 0.5, color=colors[c], ls=":", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("eigenvalue rank (dotted: between rank C-1 and C)")
    axes[0].set_ylabel("λ / λ₁ (a line per group and point: mean over seeds)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    per = spec.drop_duplicates(ID + ["point"])
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(per))
    axes[1].scatter(per["classes"] + jitter, per["outliers"], s=16, alpha=0.7, color="C0",
                    label="one probe (largest gap λᵢ/λᵢ₊₁)")
    xs = np.array([min(classes), max(classes)])
    axes[1].plot(xs, xs, "k--", lw=1, label="C (Fort & Ganguli)")
    axes[1].plot(xs, xs - 1, "k:", lw=1, label="C - 1")
    axes[1].set_xlabel("number of classes C")
    axes[1].set_ylabel("outlying eigenvalues")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return fig


# -- stiffness -----------------------------------------------------------------------------------------------
def stiffness(results: Any) -> pd.DataFrame:
    """Per group and point: the class stiffness matrices (cosine and sign, mean over seeds), within- and
    between-class stiffness, and stiffness against input distance (mean over seeds)."""
    p = _probes(results, "stiffness")
    if p.empty:
        return p
    out = []
    for (group, point), d in p.groupby(["group", "point"], sort=False):
        c = int(d["n_classes"].iloc[0])

        def mean(col: str, shape: tuple[int, ...] = (-1,), d: pd.DataFrame = d) -> np.ndarray:
            return np.nanmean(np.stack([np.asarray(v, float).reshape(shape) for v in d[col]]), 0)

        out.append(dict(sweep=d["sweep"].iloc[0], group=group, group_label=d["group_label"].iloc[0], point=point,
                        n_classes=c, seeds=d["seed"].nunique(), matrix=mean("matrix", (c, c)),
                        sign_matrix=mean("sign_matrix", (c, c)), within=d["within"].mean(),
                        between=d["between"].mean(), distances=mean("distances"),
                        distance_stiffness=mean("distance_stiffness")))
    return pd.DataFrame(out)


def stiffness_figure(st: pd.DataFrame, cap: str, max_panels: int = 3) -> Figure:
    shown = pd.concat([st.drop_duplicates("group"), st]).drop_duplicates(["group", "point"]).head(max_panels)
    fig, axes = _figure("Stiffness: class-by-class mean cos(gᵢ, gⱼ) of held-out examples, and against distance",
                        cap, len(shown) + 1, ncols=len(shown) + 1, panel=(4.2, 3.8))
    for ax, (_, r) in zip(axes, shown.iterrows(), strict=False):
        art = ax.imshow(r["matrix"], cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"{r['group_label']}\npoint {r['point']} · within {r['within']:.2f}, between "
                     f"{r['between']:.2f}", fontsize=7)
        ax.set_xlabel("class")
        ax.set_ylabel("class")
        fig.colorbar(art, ax=ax, shrink=0.7)
    ax = axes[len(shown)]
    colors = _colors(list(st["group_label"] + " · " + st["point"]))
    for _, r in st.iterrows():
        name = f"{r['group_label']} · {r['point']}"
        ax.plot(r["distances"], r["distance_stiffness"], marker="o", ms=3, color=colors[name], label=name)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("input distance (equal-count bins)")
    ax.set_ylabel("mean cosine stiffness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return fig


# -- mode connectivity ----------------------------------------------------------------------------------------
def _connectors(ev: pd.DataFrame) -> list[str]:
    return [f"{s}, {n} endpoints, {k} learned" for s, n, k in
            zip(ev["shape"], ev["endpoints"], ev["connect_points"], strict=True)]


def connect_points(results: Any, split: str = "test") -> pd.DataFrame:
    """Per connector and kind of point (the fixed endpoints, random points of the learned set, the learned
    vertices): mean, worst and count of the test NLL and accuracy over all such points of all its trials."""
    ev = final_evals(results, split, "all", clean_only=True)
    ev = ev[(ev["method"] == "connect") & ev["kind"].isin(["endpoint", "sample", "control"])] if len(ev) else ev
    if ev.empty:
        return pd.DataFrame()
    g = ev.assign(connector=_connectors(ev)).groupby(["connector", "kind"])
    return g.agg(points=("nll", "size"), nll_mean=("nll", "mean"), nll_max=("nll", "max"),
                 accuracy_mean=("accuracy", "mean"), accuracy_min=("accuracy", "min")).round(4)


def connect_curves(results: Any, split: str = "test") -> pd.DataFrame:
    """Mean ± std over connect trials of accuracy and NLL along the learned path (`path` = learned) and the
    straight line between the same endpoints (`path` = straight), per shape and number of learned vertices."""
    ev = final_evals(results, split, "all", clean_only=True)
    ev = ev[(ev["method"] == "connect") & ev["kind"].isin(["alpha", "line"])] if len(ev) else ev
    if ev.empty:
        return pd.DataFrame()
    ev = ev.assign(path=np.where(ev["kind"] == "alpha", "learned", "straight"), alpha=ev["alpha"].round(6),
                   connector=_connectors(ev))
    return mean_std(ev, ["sweep", "connector", "path", "alpha"], ["nll", "accuracy"])


def connect_figure(cc: pd.DataFrame, cap: str) -> Figure:
    groups = list(dict.fromkeys(cc["connector"]))
    fig, axes = _figure("Test loss along a learned connecting path and along the straight line", cap,
                        len(groups), ncols=len(groups), panel=(4.6, 3.8))
    for ax, g in zip(axes, groups, strict=False):
        for path, style in (("learned", "-"), ("straight", "--")):
            d = cc[(cc["connector"] == g) & (cc["path"] == path)].sort_values("alpha")
            mean, std = d["nll_mean"].to_numpy(float), np.nan_to_num(d["nll_std"].to_numpy(float))
            ax.plot(d["alpha"], mean, style, marker=".", color="C0" if path == "learned" else "black",
                    label=f"{path} (max {mean.max():.3f}) · {int(d['trials'].max())} trial(s)")
            ax.fill_between(d["alpha"], mean - std, mean + std, alpha=0.15, lw=0,
                            color="C0" if path == "learned" else "black")
        ax.set_title(g, fontsize=8)
        ax.set_xlabel("t (endpoint 0 → endpoint 1)")
        ax.set_ylabel("test NLL")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def connect_summary(cc: pd.DataFrame) -> pd.DataFrame:
    """Per connector: the highest mean test NLL and the lowest mean accuracy along each path."""
    return cc.groupby(["connector", "path"]).agg(max_nll=("nll_mean", "max"), min_accuracy=("accuracy_mean", "min"),
                                                  trials=("trials", "max")).round(4)


# -- the report section ---------------------------------------------------------------------------------------
def section(b: Any) -> None:
    """The landscape-probe figures and tables of one sweep (analysis/report.py's builder `b`); nothing when
    the sweep has no probes, hyperplane or connect trials."""
    view, trials = b.view, b.trials
    acc = hyperplane_accuracy(view)
    gold = goldilocks_measures(view)
    if len(acc):
        cap = caption(trials[trials["method"] == "hyperplane"])
        b.figure("hyperplane_accuracy", "Random hyperplanes: accuracy against dimension, per radius (Goldilocks)",
                 cap, lambda: hyperplane_figure(acc, gold, cap))
        cells = acc.pivot_table(index="hyperplane_radius", columns="hyperplane_dim", values="accuracy_mean")
        cells.columns = [f"d={c}" for c in cells.columns]
        b.table(simple_table("hyperplane_accuracy", "Test accuracy (%) on random hyperplanes: radius × d", cap, acc,
                             (100 * cells).round(2)))
    if len(gold):
        cap = caption(trials_of(trials, _probes(view, "goldilocks")))
        cols = ["trace_ratio_mean", "trace_ratio_std", "positive_fraction_mean", "loss_mean", "n"]
        b.table(simple_table("goldilocks", "Goldilocks measures: Tr(H)/‖H‖ and positive eigenvalues on a random "
                             "hyperplane", cap, gold,
                             gold.set_index([c for c in ("group_label", "point", "hyperplane_radius") if c in gold])
                             [cols].round(3)))
    spec = hessian_spectra(view)
    if len(spec):
        cap = caption(trials_of(trials, spec))
        b.figure("hessian_spectrum", "Top Hessian eigenvalues against the number of classes", cap,
                 lambda: hessian_figure(spec, cap))
        top = spec.pivot_table(index=["group_label", "point", "classes"], columns="rank", values="eigenvalue")
        top.columns = [f"λ{c}" for c in top.columns]
        summary = spec.drop_duplicates(ID + ["point"]).groupby(["group_label", "point", "classes"]).agg(
            outliers=("outliers", "mean"), trace=("trace", "mean"), loss=("loss", "mean"), n=("seed", "size"))
        b.table(simple_table("hessian_spectrum", "Top Hessian eigenvalues (mean over seeds) and the trace", cap,
                             spec, summary.join(top).round(4)))
    st = stiffness(view)
    if len(st):
        cap = caption(trials[trials["group"].isin(set(st["group"]))])
        b.figure("stiffness", "Stiffness between held-out examples", cap, lambda: stiffness_figure(st, cap))
        b.table(simple_table("stiffness", "Stiffness: mean cosine within and between classes", cap,
                             st[["group_label", "point", "within", "between", "seeds"]],
                             st.set_index(["group_label", "point"])[["within", "between", "seeds"]].round(4)))
    cc = connect_curves(view)
    if len(cc):
        cap = caption(trials[trials["method"] == "connect"])
        b.figure("connect_loss", "Mode connectivity: loss along the learned path against the straight line", cap,
                 lambda: connect_figure(cc, cap))
        b.table(simple_table("connect", "Along the learned path and the straight line: worst mean test NLL and "
                             "accuracy", cap, cc, connect_summary(cc)))
        pts = connect_points(view)
        b.table(simple_table("connect_points", "The fixed endpoints, random points of the learned set and the "
                             "learned vertices: test NLL and accuracy", cap, pts.reset_index(), pts))
