"""analysis/ on hand-built Parquet results with answers worked out by hand (real Parquet, no mocks)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import calibration, diversity, ensembles, landscape, load, metrics, tables
from analysis.predictions import load_probs
from analysis.report import build_report, results_folders
from orchestrator.cli import main as basin
from trainers.config import make_config
from trainers.metrics import classification_metrics
from trainers.results import trial_row, write_tables

# -- fixture builders -------------------------------------------------------------------------------------


def add_trial(root: Path, sweep: str = "fx", *, evals: list[dict] = (), preds: list[dict] = (),
              weights: list[dict] = (), attempt: int = 0, status: str = "completed", **cfg: object) -> str:
    """Write one trial's tables (as the trainer + FolderSink would) and return its key."""
    method = cfg.pop("method", "subspace")
    c = make_config({"epochs": 2, **cfg})
    d = {**c.to_dict(), "method": method}
    key = c.key() if method == "subspace" else f"{method}-{c.key()}"[:16]
    tabs = {
        "evals": [{"epoch": c.epochs, "split": "test", "members": 1, "corruption": "", "severity": 0,
                   "kind": "center", "alpha": None, "coords": None, **e} for e in evals],
        "predictions": [{"epoch": c.epochs, "split": "test", "kind": "center", **p} for p in preds],
        "weights": list(weights),
        "trials": [trial_row(d, name=key, status=status, error="")],
    }
    write_tables(root, tabs, sweep, key, attempt)
    return key


def pred(point: str, probs: np.ndarray, labels: np.ndarray, **kw: object) -> dict:
    probs = np.asarray(probs, np.float32)
    return {"point": point, "n_classes": probs.shape[1], "probs": probs.ravel().tolist(),
            "labels": np.asarray(labels, np.int32).tolist(), **kw}


def ev(point: str, **m: object) -> dict:
    return {"point": point, **m}


# -- metrics ----------------------------------------------------------------------------------------------
P = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25]])
Y = np.array([0, 2, 2, 1])


def test_metrics_by_hand():
    s = metrics.scores(P, Y, bins=5)
    assert s["accuracy"] == pytest.approx(0.5)  # predictions 0, 1, 2, 0
    assert s["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.8) + math.log(0.35)) / 4)
    assert s["brier"] == pytest.approx((0.14 + 0.78 + 0.06 + 0.645) / 4)
    # 5 right-closed bins: 0.7, 0.8 -> (0.6, 0.8] (both right: |1 - .75|), 0.5 -> (0.4, 0.6] (wrong: .5),
    # 0.4 -> (0.2, 0.4] (wrong: .4); ECE = (2 * .25 + .5 + .4) / 4
    assert s["ece"] == pytest.approx(0.35)
    assert metrics.ece(P, Y, bins=5) == pytest.approx(0.35)
    assert metrics.accuracy(P, Y) == pytest.approx(0.5)
    assert metrics.nll(P, Y) == pytest.approx(s["nll"])
    assert metrics.brier(P, Y) == pytest.approx(s["brier"])


def test_ece_bins_right_closed_and_nll_floor():
    assert metrics.bin_index(np.array([1 / 15, 2 / 15, 0.0, 1.0, 0.0667]), 15).tolist() == [0, 1, 0, 14, 1]
    p = np.array([[1.0, 0.0]])
    assert metrics.scores(p, [1])["nll"] == pytest.approx(-math.log(1e-12))
    assert metrics.scores(p, [1], bins=15)["ece"] == pytest.approx(1.0)


def test_metrics_equal_the_trainers():
    """Same numbers as trainers.metrics on float32 probabilities (what the trainer stores), edges included."""
    g = np.random.default_rng(0)
    logits = g.normal(size=(500, 10)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p[:10] = 1 / 10  # confidence exactly 1/10 (ties: first class)
    p[10:20] = np.eye(10)[:10]
    p = p.astype(np.float32)
    y = g.integers(0, 10, 500)
    for bins in (1, 10, 15):
        ours = metrics.scores(p, y, bins)
        theirs = classification_metrics(torch.from_numpy(p), torch.from_numpy(y), bins)
        for k in metrics.METRICS:
            assert ours[k] == pytest.approx(theirs[k], rel=1e-12, abs=1e-12), (k, bins)
    batched = metrics.scores(np.stack([p, p[::-1]]), y, 15, dtype=None)  # float32 path, two at once
    assert batched["ece"][0] == pytest.approx(metrics.scores(p, y)["ece"], abs=1e-6)
    assert batched["accuracy"][1] == metrics.accuracy(p[::-1], y)


def test_disagreement_and_cosine_by_hand():
    d = diversity.disagreement_matrix(np.array([[0, 1, 2, 2], [0, 1, 1, 2], [2, 1, 1, 0]]))
    assert d == pytest.approx(np.array([[0, 0.25, 0.75], [0.25, 0, 0.5], [0.75, 0.5, 0]]))
    c = diversity.cosine_matrix(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]]))
    r = 1 / math.sqrt(2)
    assert c == pytest.approx(np.array([[1, r, 0], [r, 1, -r], [0, -r, 1]]))


def test_mean_std_across_seeds():
    df = pd.DataFrame({"shape": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0], "trial_key": list("wxyz"),
                       "accuracy": [0.8, 0.9, 1.0, 0.5]})
    out = tables.mean_std(df, ["shape"], ["accuracy"]).set_index("shape")
    assert out.loc["a", "accuracy_mean"] == pytest.approx(0.9)
    assert out.loc["a", "accuracy_std"] == pytest.approx(0.1)  # sample std (ddof = 1)
    assert math.isnan(out.loc["b", "accuracy_std"])
    assert (out.loc["a", "n"], out.loc["a", "seeds"], out.loc["b", "trials"]) == (3, 3, 1)
    assert tables.fmt_mean_std(0.9, 0.1, "accuracy") == "90.00 ± 10.00"
    assert tables.fmt_mean_std(0.5, float("nan"), "nll") == "0.5000"


# -- on Parquet -------------------------------------------------------------------------------------------
A = np.array([[0.9, 0.1], [0.4, 0.6]])  # labels (0, 0): accuracy 0.5
B = np.array([[0.3, 0.7], [0.2, 0.8]])  # accuracy 0
YY = np.array([0, 0])


@pytest.fixture()
def two_seeds(tmp_path: Path) -> Path:
    for seed, p in ((0, A), (1, B)):
        add_trial(tmp_path, shape="point", seed=seed, preds=[pred("point", p, YY)],
                  evals=[ev("point", accuracy=metrics.accuracy(p, YY), ece=0.0)])
    return tmp_path


def test_ensemble_of_two_known_probability_matrices(two_seeds: Path):
    curves = ensembles.ensemble_curves(two_seeds, sources=["seeds"]).set_index("k")
    # k = 2: mean probabilities [[.6, .4], [.3, .7]] -> one right of two
    assert curves.loc[2, "accuracy_mean"] == pytest.approx(0.5)
    assert curves.loc[2, "nll_mean"] == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2, rel=1e-6)
    assert curves.loc[2, "brier_mean"] == pytest.approx((0.32 + 0.98) / 2, rel=1e-6)
    assert curves.loc[2, "accuracy_std"] == 0 or math.isnan(curves.loc[2, "accuracy_std"])
    # k = 1: both single seeds (all subsets enumerated): mean 0.25, sample std of (0.5, 0)
    assert curves.loc[1, "accuracy_mean"] == pytest.approx(0.25)
    assert curves.loc[1, "accuracy_std"] == pytest.approx(math.sqrt(0.125))
    assert (curves.loc[1, "n"], curves.loc[2, "trials"], curves.loc[2, "seeds"]) == (2, 2, 2)
    assert ensembles.ensemble(np.stack([A, B])) == pytest.approx(np.array([[0.6, 0.4], [0.3, 0.7]]))


def test_subsets_and_prefixes():
    w, k = ensembles.subset_weights(4, [1, 2, 4], n_subsets=5, rng=np.random.default_rng(0))
    assert (k == 1).sum() == 4 and (k == 2).sum() == 5 and (k == 4).sum() == 1  # C(4,2) = 6 > 5: drawn
    assert np.allclose(w.sum(1), 1) and np.all((w == 0) | np.isclose(w * k[:, None], 1))
    assert ensembles.prefix_weights(3, [1, 3]) == pytest.approx(np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]]))
    assert ensembles.k_grid(5) == [1, 2, 3, 4, 5]
    g = ensembles.k_grid(100, 10)
    assert g[0] == 1 and g[-1] == 100 and len(g) <= 11


def test_per_trial_sources_ordered(tmp_path: Path):
    # a line with two samples and two endpoints and a 2-epoch trajectory, all at once
    e0, e1 = np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [0.2, 0.8]])
    add_trial(tmp_path, shape="line", seed=0, preds=[
        pred("endpoint_0", e0, YY, kind="endpoint"), pred("endpoint_1", e1, YY, kind="endpoint"),
        pred("sample_1", e1, YY, kind="sample"), pred("sample_0", e0, YY, kind="sample"),
        pred("center", A, YY), pred("center", B, YY, epoch=1)])
    v = ensembles.ensemble_values(tmp_path).set_index(["source", "k"])
    assert v.loc[("endpoints", 1), "accuracy"] == 1.0  # endpoint_0 first
    assert v.loc[("samples", 1), "accuracy"] == 1.0    # sample_0 first, though written second
    assert v.loc[("checkpoints", 1), "accuracy"] == 0.5  # the latest checkpoint (A at epoch 2) first
    assert v.loc[("checkpoints", 2), "nll"] == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2, rel=1e-6)
    assert v.loc[("endpoints", 2), "accuracy"] == 1.0  # [[.5,.5],[.6,.4]]: tie -> class 0
    assert "seeds" not in v.index.get_level_values("source")  # one seed only


def test_latest_completed_attempt_wins(tmp_path: Path):
    add_trial(tmp_path, shape="point", seed=0, attempt=0, preds=[pred("point", B, YY)])
    add_trial(tmp_path, shape="point", seed=0, attempt=1, preds=[pred("point", A, YY)])
    add_trial(tmp_path, shape="point", seed=0, attempt=2, status="failed", preds=[pred("point", B, YY)])
    pr = load_probs(tmp_path)
    assert len(pr) == 1 and pr.meta["attempt"].iloc[0] == 1
    p, y = pr.arrays(pr.meta)
    assert p[0] == pytest.approx(A) and y[0].tolist() == [0, 0]


def test_robustness_table_cells(tmp_path: Path):
    acc = {("point", 0.0): [0.90, 0.92], ("point", 0.2): [0.80, 0.84],
           ("line", 0.0): [0.93, 0.95], ("line", 0.2): [0.79, 0.81]}
    for (shape, noise), values in acc.items():
        for seed, a in enumerate(values):
            point = "point" if shape == "point" else "center"
            add_trial(tmp_path, shape=shape, label_noise=noise, seed=seed,
                      evals=[ev(point, accuracy=a, ece=1 - a), ev("endpoint_0", kind="endpoint", accuracy=0.1),
                             ev(point, accuracy=0.0, split="val")])
    t = tables.robustness_table(tmp_path)
    d = t.data.set_index(["shape", "label_noise", "metric"])
    assert d.loc[("line", 0.0, "accuracy"), "mean"] == pytest.approx(0.94)
    assert d.loc[("line", 0.0, "accuracy"), "std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert d.loc[("point", 0.2, "accuracy"), "mean"] == pytest.approx(0.82)
    assert d.loc[("point", 0.2, "ece"), "mean"] == pytest.approx(0.18)
    best = d[d["best"]].index.tolist()
    assert sorted(best) == sorted([("line", 0.0, "accuracy"), ("point", 0.2, "accuracy"),
                                   ("line", 0.0, "ece"), ("point", 0.2, "ece")])
    assert (d["seeds"] == 2).all() and (d["n"] == 2).all()
    md = t.markdown()
    assert "**94.00 ± 1.41**" in md and "80.00 ± 1.41" in md and "**82.00 ± 2.83**" in md
    assert "sweep fx · 8 trials · 2 seeds" in md
    assert list(t.views[0].cells.columns) == ["accuracy (%) · label_noise=0", "accuracy (%) · label_noise=0.2",
                                              "ece (%) · label_noise=0", "ece (%) · label_noise=0.2"]


def test_separately_trained_pairs_are_judged_by_their_ensemble(tmp_path: Path):
    # their centre is the barrier between two nets, not a model: the table uses the endpoint ensemble
    for seed in (0, 1):
        add_trial(tmp_path, shape="line", method="independent", seed=seed, evals=[
            ev("center", accuracy=0.4), ev("ensemble_endpoints", kind="ensemble", accuracy=0.96 + 0.02 * seed)])
    d = tables.robustness_table(tmp_path).data.set_index("metric")
    assert d.loc["accuracy", "mean"] == pytest.approx(0.97)


def test_robustness_with_corruptions(tmp_path: Path):
    for seed in (0, 1):
        add_trial(tmp_path, shape="point", seed=seed, evals=[
            ev("point", accuracy=0.9, ece=0.1), ev("point", accuracy=0.5 + 0.1 * seed, ece=0.3,
                                                   corruption="snow", severity=3)])
    t = tables.robustness_table(tmp_path)
    assert list(t.views[0].cells.columns)[:2] == ["accuracy (%) · label_noise=0 · clean",
                                                  "accuracy (%) · label_noise=0 · snow-3"]
    snow = t.data[(t.data["corruption"] == "snow") & (t.data["metric"] == "accuracy")]
    assert snow["mean"].iloc[0] == pytest.approx(0.55)


def test_calibration_table_and_reliability(two_seeds: Path):
    t = calibration.calibration_table(two_seeds)
    row = t.data.iloc[0]
    assert row["accuracy_mean"] == pytest.approx(0.25) and row["n"] == 2
    rel = calibration.reliability_curves(two_seeds, bins=3).set_index("bin")
    # pooled over both seeds: confidences .9 (right), .6 (wrong), .7 (wrong), .8 (wrong);
    # bins (0, 1/3], (1/3, 2/3], (2/3, 1]: .6 alone in bin 1, the rest in bin 2
    assert rel["count"].tolist() == [0, 1, 3]
    assert rel.loc[2, "accuracy"] == pytest.approx(1 / 3) and rel.loc[2, "confidence"] == pytest.approx(0.8)
    assert rel["ece"].iloc[0] == pytest.approx((0.6 + abs(1 - 2.4)) / 4)


def test_alpha_curves_with_barrier_and_simplex(tmp_path: Path):
    for seed in (0, 1):
        add_trial(tmp_path, shape="line", seed=seed, evals=[
            ev(f"alpha_{a:.2f}", kind="alpha", alpha=a, accuracy=0.9 - 0.1 * abs(a - 0.5) + 0.01 * seed, nll=1.0)
            for a in (0.0, 0.5, 1.0)] + [ev("center", alpha=0.5, accuracy=0.0)])
    add_trial(tmp_path, shape="line", seed=0, method="independent", evals=[
        ev(f"alpha_{a:.2f}", kind="alpha", alpha=a, accuracy=0.5 if a == 0.5 else 0.9) for a in (0, 0.5, 1)])
    coords = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]]
    add_trial(tmp_path, shape="simplex", endpoints=3, seed=0, evals=[
        ev(f"simplex_{i}", kind="simplex", coords=c, accuracy=0.1 * i) for i, c in enumerate(coords)])
    a = landscape.alpha_curves(tmp_path)
    sub = a[a["role"] == "subspace"].set_index("alpha")
    assert sub.loc[0.5, "accuracy_mean"] == pytest.approx(0.905)  # grid row, not the center row
    assert sub.loc[0.0, "n"] == 2
    ind = a[a["role"] == "barrier"].set_index("alpha")
    assert ind.loc[0.5, "accuracy_mean"] == pytest.approx(0.5)
    s = landscape.simplex_grid(tmp_path)
    assert len(s) == 4
    assert s.set_index(["c0", "c1", "c2"]).loc[(0.5, 0.5, 0.0), "accuracy_mean"] == pytest.approx(0.3)
    assert landscape.barycentric_xy(np.array([0, 0, 1.0])) == pytest.approx((0.5, math.sqrt(3) / 2))


def test_diversity_from_parquet(tmp_path: Path):
    y = np.array([0, 1, 2, 0])
    onehot = np.eye(3)
    traj = {0: ([0, 1, 2, 0], [0, 1, 1, 0]), 1: ([2, 1, 2, 0], [2, 2, 2, 2])}  # seed: (epoch 1, epoch 2)
    for seed, (p1, p2) in traj.items():
        w = [{"epoch": e, "point": "point", "norm": 1.0, "projection": v}
             for e, v in ((1, [1.0, 0.0]), (2, [1.0, 1.0 + seed]))]
        add_trial(tmp_path, shape="point", seed=seed, weights=w, preds=[
            pred("point", onehot[p1], y, epoch=1), pred("point", onehot[p2], y, epoch=2)])
    d = diversity.prediction_disagreement(tmp_path)
    assert d.shape == (4, 4)
    assert d.to_numpy()[0] == pytest.approx([0, 0.25, 0.25, 0.75])  # seed 0 ep 1 against the others
    w = diversity.weight_similarity(tmp_path)
    assert w.to_numpy()[0] == pytest.approx([1, 1 / math.sqrt(2), 1, 1 / math.sqrt(5)])
    assert list(w.index.get_level_values("epoch")) == [1, 2, 1, 2]
    avd = diversity.accuracy_vs_diversity(tmp_path).set_index(["seed", "source"])
    # seed 0 final (acc 0.75) vs its epoch 1 (acc 1.0): 1 of 4 differs -> diversity 0.25 / 0.25
    assert avd.loc[(0, "checkpoints"), "disagreement"] == pytest.approx(0.25)
    assert avd.loc[(0, "checkpoints"), "diversity"] == pytest.approx(1.0)
    assert avd.loc[(0, "seeds"), "accuracy"] == pytest.approx(0.25)  # seed 1's final
    emb = diversity.tsne_trajectories(tmp_path)
    assert len(emb) == 4 and emb[["x", "y"]].notna().all().all()


def test_report_skips_missing_data_and_says_so(two_seeds: Path, tmp_path: Path):
    out = tmp_path / "rep"
    reps = build_report(two_seeds, out)
    (rep,) = reps
    skipped = {i.name for i in rep.items if i.skipped}
    assert {"landscape_alpha", "landscape_simplex", "weights_cosine", "tsne_trajectories"} <= skipped
    made = {i.name for i in rep.items if not i.skipped}
    assert {"ensemble_curves", "robustness", "calibration", "reliability"} <= made
    page = (out / "index.html").read_text()
    assert "skipped, no simplex trials with 3 endpoints" in page
    assert "weight_projection" in page
    assert (out / "fx" / "figures" / "ensemble_curves.svg").stat().st_size > 0


def test_several_sweeps_and_folders(tmp_path: Path):
    for sweep in ("s1", "s2"):
        for seed, p in ((0, A), (1, B)):
            add_trial(tmp_path / sweep, sweep, shape="point", seed=seed, preds=[pred("point", p, YY)],
                      evals=[ev("point", accuracy=0.5)])
    add_trial(tmp_path / "s2", "s3", shape="point", seed=5, evals=[ev("point", accuracy=0.5)])
    assert results_folders(str(tmp_path)) == [str(tmp_path / "s1"), str(tmp_path / "s2")]
    reps = build_report(str(tmp_path), tmp_path / "out")
    assert [r.sweep for r in reps] == ["s1", "s2", "s3"]
    assert "sweep s3 · 1 trial · 1 seed" in reps[2].summary
    assert (tmp_path / "out" / "s3" / "tables" / "robustness.md").exists()
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.count("<section id='sweep-") == 3


def test_cli(two_seeds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert basin(["analyze", str(two_seeds), "--out", str(tmp_path / "r"), "--hue", "shape"]) == 0
    assert "fx:" in capsys.readouterr().out
    assert basin(["analyze", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2
    assert "no results found" in capsys.readouterr().err
    assert basin(["analyze", str(two_seeds), "--out", str(tmp_path / "r3"), "--sweep", "nope"]) == 2


def test_mlflow_logs_report_to_the_sweeps_parent_run(two_seeds: Path, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{two_seeds}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("fx", artifact_location=str(tmp_path / "artifacts"))
    client.create_run(exp, tags={"basin.role": "trial"})
    parent = client.create_run(exp, tags={"basin.role": "sweep"}).info.run_id
    # default store: <sweep folder>/mlflow.db
    assert basin(["analyze", str(two_seeds), "--out", str(tmp_path / "rep"), "--mlflow"]) == 0
    names = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/index.html", "report/figures", "report/tables"} <= names
    figs = {a.path for a in client.list_artifacts(parent, "report/figures")}
    assert "report/figures/ensemble_curves.png" in figs


def test_mlflow_without_parent_run_is_a_user_error(two_seeds: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]):
    uri = f"sqlite:///{tmp_path}/other.db"
    assert basin(["analyze", str(two_seeds), "--out", str(tmp_path / "r"), "--mlflow", "--tracking-uri", uri]) == 2
    assert "no parent run tagged basin.role=sweep" in capsys.readouterr().err


def test_load_is_unchanged(two_seeds: Path):
    r = load(str(two_seeds))
    assert len(r.trials) == 2 and len(r.predictions) == 2 and set(r.evals["point"]) == {"point"}


def test_class_major_scores_equal_scores():
    g = np.random.default_rng(1)
    p = g.dirichlet(np.ones(5), size=(3, 200)).astype(np.float32)
    p[0, :20] = 0.2  # all classes tied: the first wins
    p[1, :20] = [0.4, 0.4, 0.1, 0.05, 0.05]
    y = g.integers(0, 5, 200)
    y[:20] = 1
    a = metrics.scores(p, y, 15, dtype=None)
    b = metrics.scores_class_major(np.ascontiguousarray(p.transpose(0, 2, 1)), y, 15)
    for k in metrics.METRICS:
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-7), k
    assert b["accuracy"].tolist() == a["accuracy"].tolist()
