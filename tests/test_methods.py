"""The papers' baselines as methods (issue 8): SWA, MIMO, early stopping and Fort et al.'s samplers around one
solution, each through the one method interface, on real data (digits); bad values refused by name."""

from __future__ import annotations

import pytest
import torch
from conftest import Interrupt, Keep, stop_after

from trainers import config as config_module
from trainers import methods, models
from trainers.config import ConfigError, make_config
from trainers.evaluate import splits
from trainers.methods.mimo import head_indices
from trainers.results import load_state
from trainers.samplers import Trajectory, dropout, gaussian, pca, pca_basis, random_direction
from trainers.train import run_trial

FAST = dict(epochs=6, warmup_epochs=0, alpha_grid=3, ensemble_samples=3)


def test_every_method_name_has_one_registered_module():
    assert set(config_module.METHODS) == set(methods.REGISTRY)


# -- SWA --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cycle", [0, 2])
def test_swa_average_is_the_mean_of_the_collected_weights_with_its_own_batchnorm(tmp_path, cycle):
    cfg = make_config({**FAST, "method": "swa", "shape": "point", "epochs": 8, "swa_start": 2, "swa_cycle": cycle,
                       "swa_lr": 0.02, "ensemble_samples": 10, "checkpoint_every": 1})
    sink = Keep()
    tables = run_trial(cfg, sink)
    collected = [e for e in range(3, 9) if cycle == 0 or (e - 2) % cycle == 0]
    weights = torch.stack([sink.states[e]["model"]["sub.W"][0] for e in collected])
    last = sink.states[8]["model"]
    assert int(last["collected"]) == len(collected)
    assert torch.allclose(last["average"], weights.mean(0), atol=1e-6)
    assert torch.equal(last["snapshots"][:len(collected)], weights)  # kept in collection order
    # the learning rate: cosine down to swa_lr by swa_start, then constant (or cycling lr -> swa_lr)
    lrs = [e["lr"] for e in tables["epochs"]]
    if cycle == 0:
        assert lrs[2:] == pytest.approx([0.02] * 6)
    else:
        assert lrs[3] == pytest.approx(0.02) and lrs[2] > 0.02  # a cycle ends at swa_lr
    test = {e["point"]: e for e in tables["evals"] if e["split"] == "test"}
    assert {"swa", "point", "ensemble_snapshots"} <= set(test)
    assert test["ensemble_snapshots"]["members"] == len(collected)
    assert tables["trials"][0]["main_point"] == "swa" and tables["trials"][0]["main_ensemble"] == "ensemble_snapshots"


def test_swa_batchnorm_is_recomputed_for_the_average(tmp_path):
    cfg = make_config({**FAST, "method": "swa", "shape": "point", "swa_start": 2, "batchnorm": True})
    method, d = build_method(cfg)
    g = torch.Generator().manual_seed(0)
    train_a_little(method, d, g, epochs=4)
    bn = next(m for m in method.sub.model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    iterate_stats = bn.running_mean.clone()
    swa = next(p for p in method.points(g) if p.name == "swa")
    method.predict(swa, splits(d))
    with torch.no_grad():  # the statistics now are those of the averaged weights over the training data
        method.sub.set_flat(method.average)
        pre = method.sub.model[1](method.sub.model[0](d.train_x))
    batch_means = torch.stack([b.mean(0) for b in pre.split(cfg.batch_size)])  # a cumulative average of batches
    assert torch.allclose(bn.running_mean, batch_means.mean(0), atol=1e-5)
    assert not torch.allclose(bn.running_mean, iterate_stats, atol=1e-3)


def build_method(cfg):
    from trainers import data as datasets

    d = datasets.load(cfg.dataset, val_fraction=cfg.val_fraction)
    torch.manual_seed(cfg.seed)
    return methods.build(cfg, d, torch.device("cpu")), d


def train_a_little(method, d, g, epochs: int) -> None:
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    method.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(d.train_y), generator=g)
        for i in range(0, len(perm) - 64, 64):
            opt.zero_grad()
            method.train_step(d.train_x[perm[i:i + 64]], d.train_y[perm[i:i + 64]], g)
            opt.step()
        method.end_epoch(epoch)


# -- early stopping -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["accuracy", "nll"])
def test_early_stopping_picks_the_best_validation_epoch_and_evaluates_its_state(metric):
    # a high constant learning rate makes validation go up and down
    cfg = make_config({**FAST, "shape": "point", "epochs": 10, "lr": 0.3, "schedule": "constant",
                       "early_stop": True, "early_stop_metric": metric})
    tables = run_trial(cfg)
    rows = tables["epochs"]
    values = [r["val_acc"] if metric == "accuracy" else r["val_nll"] for r in rows]
    best = values.index(max(values) if metric == "accuracy" else min(values)) + 1
    assert tables["trials"][0]["best_epoch"] == best
    val = {e["point"]: e for e in tables["evals"] if e["split"] == "val"}
    # standard training keeps its own BatchNorm statistics: the best epoch's state gives that epoch's numbers
    assert val["early_stop"]["accuracy"] == pytest.approx(rows[best - 1]["val_acc"])
    assert val["early_stop"]["nll"] == pytest.approx(rows[best - 1]["val_nll"])


def test_early_stopping_works_for_a_subspace_too():
    tables = run_trial(make_config({**FAST, "shape": "line", "early_stop": True}))
    assert 1 <= tables["trials"][0]["best_epoch"] <= 6
    assert any(e["point"] == "early_stop" and e["kind"] == "early_stop" for e in tables["evals"])


# -- MIMO -------------------------------------------------------------------------------------------------
def test_mimo_heads_see_different_examples_while_training():
    g = torch.Generator().manual_seed(0)
    idx = head_indices(64, 3, 0.0, 4, g)
    assert idx.shape == (3, 256)
    for h in range(3):  # each head sees every example of the batch `repeats` times
        assert torch.equal(torch.bincount(idx[h], minlength=64), torch.full((64,), 4))
    for a, b in ((0, 1), (0, 2), (1, 2)):  # ... at different positions: ~1/64 coincide by chance
        assert (idx[a] == idx[b]).float().mean() < 0.05
    shared = head_indices(64, 3, 0.5, 4, g)  # input repetition: half the positions are the same for all heads
    same = (shared[0] == shared[1]) & (shared[1] == shared[2])
    assert 0.45 <= same.float().mean() <= 0.6


def test_mimo_one_forward_gives_m_different_predictions_and_trains_each_head():
    cfg = make_config({**FAST, "method": "mimo", "shape": "point", "mimo_heads": 3})
    tables = run_trial(cfg)
    test = {e["point"]: e for e in tables["evals"] if e["split"] == "test"}
    assert {"member_0", "member_1", "member_2", "ensemble_members"} <= set(test)
    assert all(test[f"member_{i}"]["accuracy"] > 0.85 for i in range(3))  # every head learned the task
    probs = {p["point"]: p["probs"].view(-1, 10) for p in tables["predictions"]}
    assert not torch.allclose(probs["member_0"], probs["member_1"], atol=1e-3)
    assert torch.allclose(probs["ensemble_members"], torch.stack([probs[f"member_{i}"] for i in range(3)]).mean(0),
                          atol=1e-6)
    method, d = build_method(cfg)
    out = method.logits(d.test_x[:5])
    assert out.shape == (5, 3, 10)  # one forward pass: M heads


def test_mimo_refuses_a_model_it_cannot_wrap(monkeypatch):
    class FixedInput(torch.nn.Module):  # a model that reads one fixed channel: no room for M stacked inputs
        def __init__(self, in_shape, classes, **kw):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.head = torch.nn.Linear(4, classes)

    monkeypatch.setitem(models.MODELS, "fixed", lambda *a, **kw: FixedInput(*a))
    monkeypatch.setattr(config_module, "MODELS", (*config_module.MODELS, "fixed"))
    with pytest.raises(ConfigError, match=r"^model: expected a model MIMO can wrap \(fixed's first layer takes 1"):
        make_config({"method": "mimo", "shape": "point", "model": "fixed"})


# -- samplers around one solution ------------------------------------------------------------------------
def test_gaussian_samples_centre_on_the_checkpoint_mean_with_their_spread():
    g = torch.Generator().manual_seed(0)
    ckpt = torch.randn(8, 50) * torch.linspace(0.1, 2, 50) + 3
    draws = torch.stack([gaussian(ckpt, g) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), ckpt.mean(0), atol=0.1)
    assert torch.allclose(draws.std(0), ckpt.std(0), rtol=0.08)


def test_pca_samples_lie_in_the_span_of_the_centred_checkpoints():
    g = torch.Generator().manual_seed(0)
    ckpt = torch.randn(6, 40)
    mean = ckpt.mean(0)
    basis = torch.linalg.qr((ckpt - mean).T).Q  # (40, 6): the span of the centred checkpoints
    for rank in (1, 3, 5):
        for _ in range(20):
            d = pca(ckpt, rank, g) - mean
            assert torch.allclose(basis @ (basis.T @ d), d, atol=1e-5)  # no component outside the span
        _, directions, _ = pca_basis(ckpt, rank)
        assert directions.shape == (rank, 40)


def test_random_and_dropout_samples_are_where_they_should_be():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1000)
    assert float((random_direction(w, 0.1, g) - w).norm()) == pytest.approx(0.1 * float(w.norm()), rel=1e-5)
    s = dropout(w, 0.25, g)
    zero = s == 0
    assert 0.2 < zero.float().mean() < 0.3
    assert torch.allclose(s[~zero], w[~zero] / 0.75)


def test_samplers_evaluate_around_the_solution_with_batchnorm_and_a_floor():
    cfg = make_config({**FAST, "shape": "point", "samplers": "all", "sampler_checkpoints": 4, "sampler_rank": 2,
                       "sampler_floor": 0.5, "batchnorm": True})
    tables = run_trial(cfg)
    test = [e for e in tables["evals"] if e["split"] == "test"]
    kinds = {e["kind"] for e in test}
    assert {"random", "dropout", "gaussian", "pca"} <= kinds
    for kind in ("random", "dropout", "gaussian", "pca"):
        rows = [e for e in test if e["kind"] == kind]
        assert len(rows) == 3 and all(e["member_of"] == kind for e in rows)
        val = [e for e in tables["evals"] if e["split"] == "val" and e["kind"] == kind]
        assert all(e["accuracy"] >= 0.5 for e in val)  # the floor holds for every kept sample
        assert next(e for e in test if e["point"] == f"ensemble_{kind}")["members"] == 3


def test_trajectory_keeps_the_last_checkpoints():
    t = Trajectory(3, 2, torch.device("cpu"))
    for i in range(5):
        t.add(torch.full((2,), float(i)))
    assert sorted(t.kept()[:, 0].tolist()) == [2.0, 3.0, 4.0]


# -- resume and refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    dict(method="swa", shape="point", swa_start=2, swa_cycle=2, ensemble_samples=2),
    dict(method="mimo", shape="point", mimo_repeat_prob=0.25, model="cnn"),
    dict(shape="point", samplers="gaussian,pca,random", sampler_checkpoints=3, sampler_rank=2, early_stop=True),
])
def test_new_methods_resume_exactly(tmp_path, kw):
    cfg = make_config({**FAST, "checkpoint_every": 1, **kw})
    whole = run_trial(cfg)
    with pytest.raises(Interrupt):
        run_trial(cfg, stop_after(tmp_path, 3))
    resumed = run_trial(cfg, resume=load_state(tmp_path / "checkpoints" / "k.pt"))
    for table in ("evals",):
        assert [(e["point"], e["split"], e["nll"]) for e in resumed[table]] == \
               [(e["point"], e["split"], e["nll"]) for e in whole[table]]
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in whole["epochs"]]


@pytest.mark.parametrize("values,field", [
    ({"method": "mimo", "shape": "point", "mimo_heads": 1}, "mimo_heads"),
    ({"method": "mimo", "shape": "line"}, "shape"),
    ({"method": "swa", "shape": "point", "epochs": 10, "swa_start": 10}, "swa_start"),
    ({"method": "swa", "shape": "point", "epochs": 10, "swa_start": 4, "swa_cycle": 7}, "swa_cycle"),
    ({"samplers": "pca", "sampler_checkpoints": 5, "sampler_rank": 5}, "sampler_rank"),
    ({"samplers": "gaussian", "epochs": 3, "sampler_checkpoints": 5}, "sampler_checkpoints"),
    ({"samplers": "random,laplace"}, "samplers"),
    ({"early_stop": True, "val_fraction": 0.0}, "early_stop"),
    ({"early_stop": True, "eval_every": 0}, "early_stop"),
    ({"samplers": "random", "sampler_floor": 0.9, "val_fraction": 0.0}, "sampler_floor"),
])
def test_bad_method_values_are_refused_with_one_line_naming_the_field(values, field):
    with pytest.raises(ConfigError) as e:
        make_config(values)
    assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value)


def test_other_methods_fields_fold_so_sweeps_do_not_duplicate_trials():
    base = make_config({"shape": "line"})
    assert make_config({"shape": "line", "swa_lr": 0.3, "mimo_heads": 5}).key() == base.key()
    assert make_config({"method": "swa", "shape": "point", "swa_lr": 0.3}).swa_lr == 0.3


def test_every_shipped_sweep_validates_and_the_paper_studies_hold_their_baselines():
    from collections import Counter

    from conftest import ROOT

    from orchestrator.sweep import load_sweep

    sweeps = {p.stem: load_sweep(p) for p in sorted((ROOT / "sweeps").glob("*.yaml"))}
    assert {"subspaces-cifar10", "subspaces-digits", "deep-ensembles-cifar10", "deep-ensembles-digits",
            "mimo-cifar10", "mimo-digits"} <= set(sweeps)
    for name in ("subspaces-cifar10", "subspaces-digits"):
        cfgs = [t.config for t in sweeps[name].trials]
        simplexes = Counter((c.endpoints, c.layerwise) for c in cfgs if c.shape == "simplex")
        assert {m for m, _ in simplexes} == {2, 3, 4, 5, 6} and {lw for _, lw in simplexes} == {False, True}
        swa = {c.swa_cycle > 0 for c in cfgs if c.method == "swa"}
        assert swa == {False, True}  # high constant LR and cyclic
        assert len({c.dropout for c in cfgs}) >= 3 and len({c.label_smoothing for c in cfgs}) >= 3
        assert {c.label_noise for c in cfgs} == {0.0, 0.2} and all(c.early_stop for c in cfgs)
    mimo = [t.config for t in sweeps["mimo-cifar10"].trials]
    assert {(c.method, c.model) for c in mimo} == {("mimo", "wrn28_10"), ("subspace", "wrn28_10"),
                                                  ("independent", "wrn28_10")}
    assert all(c.mimo_heads == 3 and c.mimo_batch_repeats == 4 for c in mimo if c.method == "mimo")
    fort = [t.config for t in sweeps["deep-ensembles-cifar10"].trials]
    assert len(fort) == 10 and all(c.samplers == "all" and c.epoch_predictions for c in fort)


def test_fort_independent_seeds_beat_one_model_and_are_more_diverse_than_samples_around_one_solution():
    """Fort et al.'s two claims on digits (20% label noise, so that models disagree enough to measure), over 3
    seeds: averaging independently trained models lowers NLL below every one of them; and on the accuracy-
    diversity plane the seeds dominate the samples around one solution: a sampler's samples either disagree
    with their solution less than the seeds disagree with each other, or are less accurate than every seed."""
    runs = [run_trial(make_config({"shape": "point", "epochs": 15, "seed": s, "label_noise": 0.2, "samplers": "all",
                                   "sampler_checkpoints": 5, "sampler_rank": 3, "ensemble_samples": 4}))
            for s in (0, 1, 2)]

    def probs(tables, point):
        return next(p["probs"].view(-1, p["n_classes"]) for p in tables["predictions"] if p["point"] == point)

    labels = runs[0]["predictions"][0]["labels"].long()
    solo = [probs(t, "point") for t in runs]

    def nll(p):
        return float(-p.gather(1, labels[:, None]).clamp_min(1e-12).log().mean())

    def accuracy(p):
        return float((p.argmax(1) == labels).float().mean())

    def disagreement(a, b):
        return float((a.argmax(1) != b.argmax(1)).float().mean())

    assert nll(torch.stack(solo).mean(0)) < min(nll(p) for p in solo)
    seeds = sum(disagreement(solo[i], solo[j]) for i in range(3) for j in range(i + 1, 3)) / 3
    worst_seed = min(accuracy(p) for p in solo)
    for kind in ("random", "dropout", "gaussian", "pca"):
        samples = [(i, probs(t, f"{kind}_{k}")) for i, t in enumerate(runs) for k in range(4)]
        around = sum(disagreement(solo[i], p) for i, p in samples) / len(samples)
        acc = sum(accuracy(p) for _, p in samples) / len(samples)
        assert around < seeds or acc < worst_seed, (kind, around, seeds, acc, worst_seed)


def test_a_field_at_its_default_leaves_trial_keys_unchanged():
    """Keys hash only values that differ from the defaults: results of an earlier version, before a field
    existed, keep their keys (and are not re-run) as long as the field stays at its default."""
    import hashlib
    import json

    cfg = make_config({"shape": "simplex", "endpoints": 4, "seed": 3, "data_dir": "/elsewhere"})
    legacy = {"shape": "simplex", "endpoints": 4, "seed": 3}  # what an older version would hash: no new fields
    assert cfg.key() == hashlib.sha1(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert make_config({"shape": "simplex", "endpoints": 4, "seed": 3, "swa_lr": 0.3}).key() == cfg.key()
    assert make_config({"shape": "simplex", "endpoints": 4, "seed": 3, "samplers": "pca"}).key() != cfg.key()


def test_independent_trials_validate_and_stop_early_at_their_endpoint_ensemble_not_the_barrier():
    tables = run_trial(make_config({**FAST, "method": "independent", "shape": "line", "early_stop": True,
                                    "epoch_predictions": True}))
    val = {e["point"]: e for e in tables["evals"] if e["split"] == "val"}
    assert tables["epochs"][-1]["val_acc"] == pytest.approx(val["ensemble_endpoints"]["accuracy"])
    assert tables["epochs"][-1]["val_acc"] != pytest.approx(val["center"]["accuracy"])  # the barrier is worse
    assert not any(e["kind"] == "sample" for e in tables["evals"])  # no "samples" on the barrier line
    assert {p["point"] for p in tables["predictions"] if p["epoch"] < 6} == {"ensemble_endpoints"}  # trajectory
    assert val["early_stop"]["accuracy"] >= val["center"]["accuracy"]
