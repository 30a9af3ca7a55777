"""The report at scale and its rules: a 200-group sweep renders every figure readably (checked from
matplotlib's layout engine), every table and figure judges a trial by the same main point, "best of an
axis" picks by validation, and every member source reaches the curves. Real Parquet, written with the
trainer's writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from synthetic_results import VARIANTS, write_study

from analysis import compare, diversity, ensembles, load, plots, tables
from analysis.report import build_report
from analysis.trials import with_groups
from trainers.config import make_config
from trainers.results import trial_row, write_tables

FIGURES = ["accuracy_by_form", "centre_by_m", "ece_by_method", "reliability", "label_noise", "ensemble_curves",
           "ensemble_curves_nll", "accuracy_vs_diversity", "weights_cosine", "prediction_disagreement",
           "tsne_trajectories", "landscape_alpha", "landscape_simplex"]


# -- 200 groups ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("big") / "synth"
    assert write_study(root) == 400
    out = tmp_path_factory.mktemp("big_report")
    return root, build_report(str(root), out, check_layout=True)


def test_200_groups_render_every_figure_readably(big: tuple[Path, list]):
    root, (rep,) = big
    assert with_groups(load(str(root)).trials)["group"].nunique() == 200
    figures = {i.name: i for i in rep.items if i.kind == "figure"}
    assert [n for n in FIGURES if n not in figures or figures[n].skipped] == []
    for name in FIGURES:
        it = figures[name]
        assert it.problems == [], (name, it.problems)  # legends inside the canvas, off the data; titles apart
        assert (rep.folder / "figures" / f"{name}.png").stat().st_size > 1000
    # a figure that cannot show every group says so
    assert f"{plots.MAX_PANELS} of 200 groups shown" in figures["ensemble_curves"].note
    assert f"{plots.MAX_PANELS} of 200 groups shown" in figures["reliability"].note
    # legends name only what varies within a panel: methods (or sources), never the axes of the panels
    for name in ("label_noise", "centre_by_m", "landscape_alpha", "ensemble_curves"):
        assert figures[name].legend, name
        assert not any(f"{a}=" in entry for a in ("label_noise", "batchnorm", "lr") for entry in figures[name].legend)
    assert set(figures["ensemble_curves"].legend) >= {"independent seeds", "checkpoints of one run", "PCA Gaussian"}
    # tables and labels name only the axes that vary
    rob = next(i for i in rep.items if i.name == "robustness").table
    assert list(rob.views[0].cells.index.names) == ["series", "batchnorm", "lr"]
    page = (rep.folder / "index.html").read_text()
    assert "<nav>" in page
    for it in figures.values():  # each figure's table folded beneath it
        if it.table is not None:
            assert f"<summary>Table beneath this figure: {it.table.title}" in page, it.name


def test_layout_check_finds_what_a_reader_could_not_read():
    fig = Figure(figsize=(4, 3), layout="constrained")
    a, b = fig.subplots(1, 2)
    a.plot([0, 1], [0, 1], label="a line")
    a.legend(loc="center")                                  # over the data
    fig.legend(["far away"], bbox_to_anchor=(1.6, 1.0))     # outside the canvas
    a.set_title("a long title that runs into the title of its neighbour panel")
    b.set_title("the neighbour's title, also long enough")
    problems = plots.layout_problems(fig)
    assert any("outside the canvas" in p for p in problems)
    assert any("over the data" in p for p in problems)
    assert any("overlaps" in p for p in problems)
    ok = Figure(figsize=(4, 3), layout="constrained")
    ax = ok.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_title("fine")
    ok.legend(["x"], loc="outside right upper")
    assert plots.layout_problems(ok) == []


# -- one main point --------------------------------------------------------------------------------------
Y = np.array([0, 1, 0, 1])
RIGHT = np.eye(2)[Y] * 0.8 + 0.1   # accuracy 1
WRONG = RIGHT[:, ::-1]             # accuracy 0
HALF = np.array([RIGHT[0], RIGHT[1], WRONG[2], WRONG[3]])


def _trial(root: Path, points: dict[str, tuple[np.ndarray, str, str]], main: tuple[str, str],
           epoch_point: str, weights: list[str], **cfg: object) -> None:
    c = make_config({"epochs": 2, "early_stop": True, **cfg})
    evals, preds = [], []
    for name, (p, kind, member_of) in points.items():
        alpha = {"alpha_0.00": 0.0, "alpha_0.50": 0.5, "alpha_1.00": 1.0}.get(name)
        acc = float((p.argmax(1) == Y).mean())
        for split in ("test", "val"):
            evals.append(dict(epoch=2, split=split, point=name, kind=kind, alpha=alpha, members=1,
                              member_of=member_of, accuracy=acc, nll=1 - acc, brier=1 - acc, ece=0.1, corruption="",
                              severity=0))
        preds.append(dict(epoch=2, split="test", point=name, kind=kind, member_of=member_of, n_classes=2,
                          probs=p.ravel().tolist(), labels=Y.tolist()))
    preds.append(dict(epoch=1, split="test", point=epoch_point, kind="center", member_of="", n_classes=2,
                      probs=points[epoch_point][0].ravel().tolist(), labels=Y.tolist()))
    w = [dict(epoch=e, point=p, norm=1.0, projection=[1.0, float(e), float(i)]) for e in (1, 2)
         for i, p in enumerate(weights)]
    write_tables(root, {"evals": evals, "predictions": preds, "weights": w,
                        "trials": [trial_row(c.to_dict(), name=c.key(), status="completed", error="",
                                             main_point=main[0], main_ensemble=main[1], best_epoch=1)]},
                 "mp", c.key(), 0)


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Separately trained pairs whose centre (the barrier) is wrong and whose endpoint ensemble is right;
    SWA whose average is right and whose final iterate is wrong; standard training at half."""
    root = tmp_path_factory.mktemp("main_point")
    for noise in (0.0, 0.2):
        for seed in (0, 1):
            _trial(root, {"endpoint_0": (RIGHT, "endpoint", "endpoints"),
                          "endpoint_1": (RIGHT, "endpoint", "endpoints"),
                          "center": (WRONG, "center", ""), "alpha_0.00": (RIGHT, "alpha", ""),
                          "alpha_0.50": (WRONG, "alpha", ""), "alpha_1.00": (RIGHT, "alpha", ""),
                          "ensemble_endpoints": (RIGHT, "ensemble", ""), "early_stop": (WRONG, "early_stop", "")},
                   ("ensemble_endpoints", "ensemble_endpoints"), "center", ["endpoint_0", "endpoint_1", "center"],
                   method="independent", shape="line", label_noise=noise, seed=seed)
            _trial(root, {"swa": (RIGHT, "swa", ""), "point": (WRONG, "center", ""),
                          "snapshot_0": (RIGHT, "snapshot", "snapshots"),
                          "snapshot_1": (RIGHT, "snapshot", "snapshots"),
                          "ensemble_snapshots": (RIGHT, "ensemble", ""), "early_stop": (HALF, "early_stop", "")},
                   ("swa", "ensemble_snapshots"), "point", ["point", "swa"], method="swa", shape="point",
                   swa_start=1, label_noise=noise, seed=seed)
            _trial(root, {"point": (HALF, "center", ""), "early_stop": (HALF, "early_stop", "")}, ("point", ""),
                   "point", ["point"], shape="point", label_noise=noise, seed=seed)
    return root


def test_every_table_and_figure_judges_a_trial_by_its_main_point(judged: Path, tmp_path: Path):
    (rep,) = build_report(str(judged), tmp_path)
    csv = {n: pd.read_csv(rep.folder / "tables" / f"{n}.csv") for n in
           ("robustness", "calibration", "ece_by_method", "label_noise", "ensemble_curves", "reliability",
            "accuracy_vs_diversity")}
    want = {"Ensemble of 2 independent": 1.0, "SWA (high const. LR)": 1.0, "Standard": 0.5}
    for series, acc in want.items():
        rob = csv["robustness"]
        assert rob.loc[(rob["series"] == series) & (rob["metric"] == "accuracy"), "mean"].tolist() == [acc, acc]
        cal = csv["calibration"]
        main = cal[(cal["series"] == series) & cal["point"].isin(["ensemble_endpoints", "swa", "point"])]
        assert set(main["accuracy_mean"]) == {acc}, series
        for fig in ("ece_by_method", "label_noise"):
            d = csv[fig]
            assert set(d.loc[d["series"] == series, "accuracy_mean"]) == {acc}, (fig, series)
        ens = csv["ensemble_curves"]
        seeds = ens[(ens["series"] == series) & (ens["source"] == "seeds") & (ens["k"] == 1)]
        assert set(seeds["accuracy_mean"]) == {acc}, series
        rel = csv["reliability"]
        r = rel[rel["group_label"].str.startswith(series)]
        assert (r["count"] * r["accuracy"].fillna(0)).sum() / r["count"].sum() == pytest.approx(acc)
        avd = csv["accuracy_vs_diversity"]
        assert set(avd.loc[avd["series"] == series, "reference_accuracy"]) == {acc}, series
    # the barrier is never a model: no early-stopping row, no trajectory of an independent pair's centre
    rob = csv["robustness"]
    assert "Ensemble of 2 independent (opt. early stop)" not in set(rob["series"])
    assert "Standard (opt. early stop)" in set(rob["series"])           # the papers' early-stopping baseline
    cal = csv["calibration"]
    assert "early_stop" in set(cal.loc[cal["series"] == "SWA (high const. LR)", "point"])  # every trial's, here
    assert "early_stop" not in set(cal.loc[cal["series"] == "Ensemble of 2 independent", "point"])
    ens = csv["ensemble_curves"]
    assert "checkpoints" not in set(ens.loc[ens["series"] == "Ensemble of 2 independent", "source"])
    assert "checkpoints" in set(ens.loc[ens["series"] == "SWA (high const. LR)", "source"])
    assert diversity.weight_point({"endpoint_0", "endpoint_1", "center"}, "ensemble_endpoints") == "endpoint_0"
    assert diversity.weight_point({"point", "swa"}, "swa") == "point"
    alpha = pd.read_csv(rep.folder / "tables" / "landscape_alpha.csv")
    assert set(alpha["role"]) == {"barrier"}


# -- best of an axis -------------------------------------------------------------------------------------
def test_best_of_axis_picks_by_validation_not_test(tmp_path: Path):
    # validation: dropout 0.1 best; test: dropout 0.3 best; no dropout would win both but is not a candidate
    scores = {0.0: (1.0, 1.0), 0.1: (0.75, 0.5), 0.3: (0.5, 0.75)}   # dropout -> (val, test)
    for d, (val, test) in scores.items():
        for seed in (0, 1):
            c = make_config({"epochs": 2, "shape": "point", "dropout": d, "seed": seed})
            ev = [dict(epoch=2, split=s, point="point", kind="center", members=1, member_of="", accuracy=a, nll=1 - a,
                       brier=0.0, ece=0.0, corruption="", severity=0) for s, a in (("val", val), ("test", test))]
            write_tables(tmp_path, {"evals": ev, "trials": [trial_row(c.to_dict(), name="", status="completed",
                                                                      error="", main_point="point")]},
                         "best", c.key(), 0)
    b = compare.best_of_axis(tmp_path, "dropout")
    assert len(b) == 1
    row = b.iloc[0]
    assert (row["value"], row["series"], row["candidates"]) == (0.1, "Dropout (best)", "0.1, 0.3")
    assert row["select_accuracy"] == pytest.approx(0.75) and row["accuracy_mean"] == pytest.approx(0.5)
    rows = compare.paper_rows(tmp_path)
    assert set(rows["series"]) == {"Standard", "Dropout (best)"}
    assert rows.loc[rows["series"] == "Dropout (best)", "dropout"].eq(0.1).all()
    t = compare.best_of_table(tmp_path)
    assert "dropout=0.1" in t.markdown() and "50.00 ± 0.00" in t.markdown()
    assert compare.best_of_axis(tmp_path, "label_smoothing").empty  # the axis does not vary


# -- member sources ----------------------------------------------------------------------------------------
def test_every_member_source_reaches_the_curves_and_diversity(tmp_path: Path):
    write_study(tmp_path, variants=["point", "line", "swa", "mimo"], label_noise=[0.0], batchnorm=[True], lr=[0.05])
    r = load(str(tmp_path))
    values = ensembles.ensemble_values(r)
    assert set(values["source"]) == set(ensembles.SOURCES)
    assert ensembles.sources_in(load_core_meta(r)) == list(ensembles.SOURCES)
    avd = diversity.accuracy_vs_diversity(r)
    assert set(avd["source"]) == set(ensembles.SOURCES)
    # Fort et al.'s samplers hang on the standard-training group, beside its seeds
    point = avd[avd["series"] == "Standard"]
    assert {"seeds", "random", "dropout", "gaussian", "pca", "checkpoints"} <= set(point["source"])
    curves = ensembles.ensemble_curves(r, values=values)
    assert curves.groupby("source")["k"].max().to_dict()["members"] == make_config(VARIANTS["mimo"]).mimo_heads
    assert tables.robustness_table(r).data["series"].str.contains("SWA").any()


def load_core_meta(r: object) -> pd.DataFrame:
    from analysis.predictions import load_core

    return load_core(r).meta
