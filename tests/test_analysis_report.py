"""A report built from a real (tiny) run of the trainer contains every figure and table, each non-empty,
and the analysis recomputes the trainer's own metrics from the Parquet predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import ensembles, load, metrics
from analysis.predictions import load_core
from analysis.report import build_report
from trainers.config import make_config
from trainers.results import FolderSink
from trainers.train import run_trial

BASE = dict(dataset="digits", model="mlp", epochs=2, epoch_predictions=True, weight_projection=64,
            alpha_grid=5, simplex_grid=3, ensemble_samples=3, checkpoint_every=0, device="cpu")
CONFIGS = [dict(shape="point", seed=0), dict(shape="point", seed=1), dict(shape="point", seed=0, label_noise=0.2),
           dict(shape="line", seed=0), dict(shape="simplex", endpoints=3, seed=0)]
FIGURES = ["accuracy_by_form", "centre_by_m", "ece_by_method", "reliability", "label_noise", "ensemble_curves",
           "ensemble_curves_nll", "accuracy_vs_diversity", "weights_cosine", "prediction_disagreement",
           "tsne_trajectories", "landscape_alpha", "landscape_simplex"]
TABLES = ["robustness", "calibration", "accuracy_by_form", "centre_by_m", "ece_by_method", "reliability",
          "label_noise", "ensemble_curves", "accuracy_vs_diversity", "landscape_alpha", "landscape_simplex"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results") / "tiny"
    for c in CONFIGS:
        cfg = make_config({**BASE, **c})
        run_trial(cfg, FolderSink(root, sweep="tiny", trial_key=cfg.key()))
    return root


@pytest.fixture(scope="module")
def report(run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("report")
    return out, build_report(str(run), out)


def test_every_figure_and_table_is_there_and_not_empty(report: tuple[Path, list]):
    out, (rep,) = report
    assert [i.name for i in rep.items if i.skipped] == ["best_of_axis"]  # no dropout or label smoothing axis
    folder = out / "tiny"
    for name in FIGURES:
        for ext in ("png", "svg"):
            f = folder / "figures" / f"{name}.{ext}"
            assert f.stat().st_size > 1000, f
        assert b"sweep tiny" in (folder / "figures" / f"{name}.svg").read_bytes()  # the title says which sweep
    for name in TABLES:
        csv = pd.read_csv(folder / "tables" / f"{name}.csv")
        assert len(csv) > 0, name
        md = (folder / "tables" / f"{name}.md").read_text()
        assert "sweep tiny · " in md and md.count("\n|") >= 2, name
    page = (out / "index.html").read_text()
    for name in FIGURES:
        assert f"tiny/figures/{name}.png" in page and f"tiny/figures/{name}.svg" in page
    for name in TABLES:
        assert f"tiny/tables/{name}.csv" in page
    assert "sweep tiny · 5 trials · 2 seeds" in page
    sweep_page = (folder / "index.html").read_text()
    assert "'figures/ensemble_curves.png'" in sweep_page  # the per-sweep page links relative to itself


def test_report_numbers_are_the_trainers(run: Path, report: tuple[Path, list]):
    out, _ = report
    rob = pd.read_csv(out / "tiny" / "tables" / "robustness.csv")
    assert set(rob["label_noise"]) == {0.0, 0.2}
    r = load(str(run))
    main = r.evals[(r.evals["point"].isin(["point", "center"])) & (r.evals["split"] == "test")]
    main = main.merge(r.trials[["trial_key", "shape", "label_noise"]], on="trial_key")
    line = main[main["shape"] == "line"]
    cell = rob[(rob["shape"] == "line") & (rob["metric"] == "accuracy")]
    assert cell["mean"].iloc[0] == pytest.approx(line["accuracy"].iloc[0])


def test_metrics_recomputed_from_predictions_equal_the_trainers(run: Path):
    r = load(str(run))
    probs = load_core(r)
    ev = r.evals[r.evals["split"] == "test"].set_index(["trial_key", "epoch", "point"])
    final = probs.meta[probs.meta["epoch"] == 2]
    assert len(final) >= 10
    for _, row in final.iterrows():
        p, y = probs.arrays(row.to_frame().T)
        ours = metrics.scores(p[0], y[0], 15)
        theirs = ev.loc[(row["trial_key"], row["epoch"], row["point"])]
        for k in metrics.METRICS:
            assert ours[k] == pytest.approx(theirs[k], rel=1e-9, abs=1e-12), (row["point"], k)


def test_endpoint_ensemble_matches_the_trainers_ensemble(run: Path):
    r = load(str(run))
    values = ensembles.ensemble_values(r)
    assert set(values["source"]) == {"seeds", "checkpoints", "endpoints", "samples"}
    ev = r.evals[(r.evals["point"] == "ensemble_endpoints") & (r.evals["split"] == "test")]
    for _, e in ev.iterrows():
        v = values[(values["trial_key"] == e["trial_key"]) & (values["source"] == "endpoints")]
        full = v[v["k"] == v["members"]].iloc[0]
        for k in metrics.METRICS:  # float32 averaging in both; only rounding differs
            assert full[k] == pytest.approx(e[k], abs=1e-5), k
    assert np.isfinite(values[list(metrics.METRICS)].to_numpy(float)).all()
