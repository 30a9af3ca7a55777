"""Landscape probes against exact computations on a tiny digits model: the Hessian's top eigenvalues and
trace, the Goldilocks measures on a random hyperplane, per-example gradients and stiffness; the hyperplane
method (only θ trains, w₀ + Pθ reproduces the weights it was evaluated at); probe points that do not exist."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers import data as datasets
from trainers import methods, probes
from trainers.config import ConfigError, make_config, probe_point_names
from trainers.methods import hyperplane
from trainers.methods.base import Point
from trainers.results import FolderSink, load_state
from trainers.train import run_trial

# mlp width 1: hidden 8 with BatchNorm, 698 weights: the exact Hessian is cheap
TINY = dict(dataset="digits", model="mlp", width=1, batchnorm=True, shape="point", epochs=1, warmup_epochs=0,
            probe_examples=300, probe_top_k=5, probe_trace_samples=200, probe_hyperplane_dim=8,
            probe_points="main", checkpoint_every=0, device="cpu")


def build(cfg):
    d = datasets.load(cfg.dataset, val_fraction=cfg.val_fraction, num_classes=cfg.num_classes)
    torch.manual_seed(cfg.seed)
    return methods.build(cfg, d, torch.device("cpu")), d


def exact_hessian(method, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model = probes.FlatModel(method, w)

    def loss(v: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(model, {"w": v}, (x,)), y)

    return torch.func.hessian(loss)(w.detach().clone()).double()


@pytest.fixture(scope="module")
def probed():
    """Probe rows of a tiny model after one epoch, and the exact Hessian at the same point (same examples,
    same BatchNorm statistics: the ones the probe recomputed, in eval mode)."""
    cfg = make_config({**TINY, "probes": "all"})
    method, d = build(cfg)
    rows = {r["probe"]: r for r in probes.probe_rows(cfg, method, d, epoch=1)}
    x, y = probes.examples(d.train_x, d.train_y, cfg.probe_examples)
    w = method.flat(method.val_point()).detach()
    return cfg, method, d, rows, exact_hessian(method, w, x, y)


def test_top_eigenvalues_and_trace_equal_the_exact_hessians(probed):
    cfg, method, _, rows, H = probed
    assert not method.training  # BatchNorm in eval mode: one deterministic Hessian
    exact = torch.linalg.eigvalsh(H).flip(0).numpy()
    row = rows["hessian"]
    assert row["dim"] == H.shape[0] == method.sub.n_params and row["examples"] == cfg.probe_examples
    np.testing.assert_allclose(row["eigenvalues"], exact[:cfg.probe_top_k], rtol=1e-3, atol=1e-5 * exact[0])
    # Hutchinson with Rademacher vectors: variance 2 (|H|_F^2 - sum H_ii^2) / samples; 4 sigma holds across seeds
    sigma = math.sqrt(2 * (H.square().sum() - H.diagonal().square().sum()) / cfg.probe_trace_samples)
    assert abs(row["trace"] - float(H.trace())) < 4 * sigma
    assert sigma < 0.2 * abs(float(H.trace()))  # the tolerance is tight enough to mean something


def test_goldilocks_measures_equal_those_of_the_exact_restricted_hessian(probed):
    cfg, _, _, rows, H = probed
    basis = probes.hyperplane_basis(H.shape[0], cfg.probe_hyperplane_dim, torch.device("cpu"))
    assert torch.allclose(basis.T @ basis, torch.eye(cfg.probe_hyperplane_dim, dtype=basis.dtype), atol=1e-10)
    eig = torch.linalg.eigvalsh(basis.T @ H @ basis).flip(0).numpy()
    row = rows["goldilocks"]
    scale = abs(eig).max()
    np.testing.assert_allclose(row["eigenvalues"], eig, rtol=1e-3, atol=1e-4 * scale)
    assert row["trace_ratio"] == pytest.approx(eig.sum() / np.sqrt((eig**2).sum()), rel=1e-3, abs=1e-4)
    assert row["positive_fraction"] == pytest.approx(float((eig > 0).mean()))


def test_per_example_gradients_and_stiffness_of_an_example_with_itself(probed):
    cfg, method, d, rows, _ = probed
    x = torch.cat([d.test_x[:6], d.test_x[:1]])  # the first example twice
    y = torch.cat([d.test_y[:6], d.test_y[:1]])
    model = probes.FlatModel(method, method.flat(method.val_point()))
    g = probes.per_example_grads(model, x, y)
    for i in (0, 3):  # vmap(grad) equals one backward pass per example
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        assert torch.allclose(g[i], model.w.grad, rtol=1e-4, atol=1e-7)
    cos, sign = probes.pair_stiffness(g)
    assert cos[0, 6] == pytest.approx(1.0, abs=1e-9) and sign[0, 6] == 1.0  # the example with itself
    assert torch.allclose(cos.diagonal(), torch.ones(7, dtype=cos.dtype))
    assert cos[0, 1] < 1 - 1e-3
    # the class matrix over [a, a]: its only pair is the example with itself
    st = probes.stiffness(g[[0, 6]], y[[0, 6]], d.classes, x[[0, 6]])
    c = int(y[0])
    assert st["matrix"].view(d.classes, d.classes)[c, c] == pytest.approx(1.0, abs=1e-6)
    # the probe's own row: one matrix entry per pair of classes, within-class pairs stiffer than between
    row = rows["stiffness"]
    assert row["n_classes"] == 10 and len(row["matrix"]) == len(row["sign_matrix"]) == 100
    assert row["examples"] == min(cfg.probe_examples, len(d.test_y)) and row["within"] > row["between"]
    assert len(row["distances"]) == len(row["distance_stiffness"]) == probes.DISTANCE_BINS


def test_main_point_names_and_existing_points():
    line = make_config({**TINY, "shape": "line", "alpha_grid": 3, "probes": "hessian"})
    simplex = make_config({**TINY, "shape": "simplex", "endpoints": 3, "simplex_grid": 2, "probes": "hessian"})
    swa = make_config({**TINY, "method": "swa", "epochs": 4, "probes": "hessian"})
    plane = make_config({**TINY, "method": "hyperplane", "hyperplane_dim": 5, "probes": "hessian"})
    indep = make_config({**TINY, "method": "independent", "shape": "line", "alpha_grid": 3, "probes": "hessian"})
    for cfg in (line, simplex, swa, plane, indep):  # every name the config accepts is a point of the method
        method, _ = build(cfg)
        names = {p.name for p in method.points(torch.Generator().manual_seed(0))}
        assert set(probe_point_names(cfg)) <= names, cfg.method
    method, _ = build(indep)  # main of a trial judged by an ensemble: its first member
    assert [p.name for p in probes.resolve_points(indep, method)] == ["endpoint_0"]


def test_probes_of_points_that_do_not_exist_are_refused():
    with pytest.raises(ConfigError) as e:
        make_config({**TINY, "shape": "line", "probes": "hessian", "probe_points": "center,endpoint_5,alpha_0.33"})
    msg = str(e.value)
    assert msg.startswith("probe_points: expected main or points of this trial (endpoint_0, endpoint_1, center, "
                          "alpha_0.00 .. alpha_1.00)") and "there is no endpoint_5, alpha_0.33" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=r"^probes: expected a comma-separated subset of hessian, goldilocks, "):
        make_config({**TINY, "probes": "hessian,curvature"})
    with pytest.raises(ConfigError, match=r"^probes: expected none for method mimo"):
        make_config({**TINY, "method": "mimo", "probes": "hessian"})
    with pytest.raises(ConfigError, match=r"^hyperplane_dim: expected between 1 and the model's 698 parameters"):
        make_config({**TINY, "method": "hyperplane", "hyperplane_dim": 5000})


def test_hyperplane_trains_only_theta_and_w0_plus_P_theta_reproduces_the_weights(tmp_path, monkeypatch):
    cfg = make_config({**TINY, "width": 2, "batchnorm": False, "method": "hyperplane", "hyperplane_dim": 40,
                       "hyperplane_radius": 2.0, "epochs": 3, "optimizer": "adam", "lr": 0.05,
                       "weight_decay": 0.0, "checkpoint_every": 1})
    tables = run_trial(cfg, FolderSink(tmp_path, trial_key="h"))
    state = load_state(tmp_path / "checkpoints" / "h.pt")["model"]
    method, d = build(cfg)  # the same initialisation as the trial's
    assert [p is method.theta for p in method.parameters()] == [True]  # the optimizer gets θ only
    assert torch.equal(state["sub.W"], method.sub.W.detach())          # w₀ did not move
    plain, _ = build(make_config({**TINY, "width": 2, "batchnorm": False}))
    assert torch.allclose(state["sub.W"], 2.0 * plain.sub.W.detach())  # w₀ = radius × the model's init
    theta = state["theta"]
    assert theta.shape == (40,) and theta.abs().sum() > 0
    P = hyperplane.Projection(method.sub.n_params, 40, cfg.seed).dense()
    assert P.shape == (method.sub.n_params, 40)
    assert torch.allclose(P.norm(dim=0), torch.ones(40), atol=0.15)  # columns of unit norm, nearly
    method.load_state_dict(state)
    w = state["sub.W"][0] + P @ theta
    assert torch.allclose(method.val_point().weights, w, atol=1e-6)
    # the accuracy recorded for the trained point is that of w₀ + Pθ
    acc = float((method.predict(Point("w", "center", weights=w), {"test": d.test_x})["test"].argmax(1)
                 == d.test_y).float().mean())
    recorded = next(e for e in tables["evals"] if e["point"] == "point" and e["split"] == "test")
    assert recorded["accuracy"] == pytest.approx(acc) and acc > 0.2  # chance: 0.1
    # a big model's P is never built whole: chunks regenerated from the seed give the same products
    monkeypatch.setattr(hyperplane, "DENSE_LIMIT", 0)
    monkeypatch.setattr(hyperplane, "CHUNK", 100)
    proj = hyperplane.Projection(method.sub.n_params, 40, cfg.seed)
    whole, g = proj.dense(), torch.randn(method.sub.n_params)
    assert torch.allclose(proj.matvec(theta), whole @ theta, atol=1e-6)
    assert torch.allclose(proj.rmatvec(g), whole.T @ g, atol=1e-5)
    assert proj._dense is None
