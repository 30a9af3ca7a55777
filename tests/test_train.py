"""Whole trials on real data (digits): accuracy, evaluation set, determinism, checkpoint/resume, the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import Interrupt, stop_after

import analysis
from trainers.config import ConfigError, make_config
from trainers.results import FolderSink, load_state
from trainers.train import run_trial

FAST = dict(epochs=3, eval_every=1, alpha_grid=5, ensemble_samples=3)


def test_digits_line_midpoint_reaches_90_percent():
    for seed in (0, 1):
        tables = run_trial(make_config({"shape": "line", "seed": seed}))  # the default recipe: mlp, 20 epochs
        mid = next(e for e in tables["evals"] if e["point"] == "center" and e["split"] == "test")
        assert mid["accuracy"] >= 0.90, (seed, mid)


def test_standard_evaluation_covers_every_point():
    line = run_trial(make_config({**FAST, "shape": "line", "alpha_grid": 21}))
    test = {e["point"]: e for e in line["evals"] if e["split"] == "test"}
    assert {"endpoint_0", "endpoint_1", "center", "ensemble_endpoints", "ensemble_samples"} <= set(test)
    alphas = sorted(e["alpha"] for e in test.values() if e["kind"] == "alpha")
    assert alphas == pytest.approx([i / 20 for i in range(21)])
    # the alpha grid and the named points agree where they coincide (one evaluation, shared)
    assert test["alpha_0.00"]["accuracy"] == test["endpoint_0"]["accuracy"]
    assert test["alpha_0.50"]["nll"] == test["center"]["nll"]
    tri = run_trial(make_config({**FAST, "shape": "simplex", "endpoints": 3, "simplex_grid": 4}))
    names = {e["point"] for e in tri["evals"] if e["kind"] == "simplex"}
    assert len(names) == 15 and "simplex_4_0_0" in names and "simplex_1_1_2" in names


def test_ensembles_average_probabilities_not_logits():
    tables = run_trial(make_config({**FAST, "shape": "simplex", "endpoints": 3}))
    probs = {p["point"]: p["probs"].view(-1, p["n_classes"]) for p in tables["predictions"]}
    mean = torch.stack([probs[f"endpoint_{i}"] for i in range(3)]).mean(0)
    assert torch.allclose(probs["ensemble_endpoints"], mean)
    ens = next(e for e in tables["evals"] if e["point"] == "ensemble_endpoints" and e["split"] == "test")
    labels = tables["predictions"][0]["labels"]
    assert ens["members"] == 3
    assert ens["accuracy"] == pytest.approx(float((mean.argmax(1) == labels).float().mean()))


def test_same_config_and_seed_give_the_same_numbers():
    cfg = make_config({**FAST, "shape": "curve", "layerwise": True, "label_noise": 0.2})
    a, b = run_trial(cfg), run_trial(cfg)
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert [e["nll"] for e in a["evals"]] == [e["nll"] for e in b["evals"]]
    c = run_trial(make_config({**FAST, "shape": "curve", "layerwise": True, "label_noise": 0.2, "seed": 1}))
    assert [e["nll"] for e in a["evals"]] != [e["nll"] for e in c["evals"]]


@pytest.mark.parametrize("kw", [dict(shape="line", model="cnn", augment=True),
                                dict(shape="simplex", endpoints=3, layerwise=True, optimizer="adam", lr=1e-3,
                                     dropout=0.1, epoch_predictions=True, weight_projection=8)])
def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path, kw):
    cfg = make_config({**FAST, "epochs": 4, "warmup_epochs": 1, **kw})
    whole = run_trial(cfg)
    with pytest.raises(Interrupt):
        run_trial(cfg, stop_after(tmp_path, 2))
    state = load_state(tmp_path / "checkpoints" / "k.pt")  # weights_only=True
    assert state["epoch"] == 2
    resumed = run_trial(cfg, resume=state)
    def values(rows):
        return [[v.tolist() if torch.is_tensor(v) else v for k, v in r.items() if k not in ("seconds", "samples_per_s")]
                for r in rows]

    for table in ("epochs", "evals"):
        assert values(resumed[table]) == values(whole[table]), table
    for a, b in zip(whole["predictions"], resumed["predictions"], strict=True):
        assert torch.equal(a["probs"], b["probs"])
    for a, b in zip(whole["weights"], resumed["weights"], strict=True):
        assert torch.equal(a["projection"], b["projection"])


def test_folder_sink_writes_parquet_that_analysis_reads(tmp_path):
    cfg = make_config({**FAST, "shape": "line", "label_noise": 0.2, "epoch_predictions": True,
                       "weight_projection": 16})
    run_trial(cfg, FolderSink(tmp_path, sweep="s", trial_key=cfg.key(), name="line"))
    r = analysis.load(str(tmp_path))
    assert len(r.trials) == 1 and r.trials.loc[0, "status"] == "completed"
    assert r.trials.loc[0, "label_noise_actual"] == pytest.approx(0.2, abs=0.05)
    assert r.trials.loc[0, "shape"] == "line" and r.trials.loc[0, "trial_key"] == cfg.key()
    assert list(r.epochs["epoch"]) == [1, 2, 3] and r.epochs["val_acc"].notna().all()
    assert set(r.evals["split"]) == {"test", "val"}
    center = r.predictions[r.predictions["point"] == "center"].sort_values("epoch")
    assert list(center["epoch"]) == [1, 2, 3]  # a trajectory: one per epoch, the last from the final evaluation
    p = np.asarray(center.iloc[-1]["probs"]).reshape(-1, 10)
    assert np.allclose(p.sum(1), 1, atol=1e-5) and len(p) == len(center.iloc[-1]["labels"])
    assert len(r.weights) == 3 * 3 and r.weights["projection"].map(len).eq(16).all()


def test_config_errors_name_the_field():
    for values, field in [({"shape": "plane"}, "shape"), ({"epochs": 0}, "epochs"), ({"lr": "fast"}, "lr"),
                          ({"label_noise": 1.5}, "label_noise"), ({"shape": "simplex", "endpoints": 1}, "endpoints"),
                          ({"batchnorm": "yes"}, "batchnorm"), ({"sedd": 1}, "sedd"), ({"preset": "x"}, "preset")]:
        with pytest.raises(ConfigError) as e:
            make_config(values)
        assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value)


def test_preset_fills_the_papers_recipe_and_fields_win():
    cfg = make_config({"preset": "subspaces", "epochs": 10})
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.warmup_epochs, cfg.model) == \
        (0.1, 0.9, 1e-4, 128, 5, "cresnet20")
    assert cfg.epochs == 10
    with pytest.raises(ConfigError, match="warmup_epochs"):  # 5 warm-up epochs do not fit in 2
        make_config({"preset": "subspaces", "epochs": 2})


def test_cli_train_and_its_one_line_error(tmp_path):
    good = tmp_path / "t.yaml"
    good.write_text("shape: point\nepochs: 2\nalpha_grid: 3\n")
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", str(good), "--out", str(tmp_path / "r"),
                          "--quiet", "--set", "seed=3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "point" in out.stdout and "acc" in out.stdout
    assert analysis.load(str(tmp_path / "r")).trials.loc[0, "seed"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("shape: line\nepochs: ten\n")
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", str(bad), "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "epochs" in out.stderr and "bad.yaml" in out.stderr
    assert not (tmp_path / "b").exists()  # nothing started


def test_independent_endpoints_have_a_barrier_that_a_trained_line_does_not():
    """Fort et al. / Wortsman et al.: the straight line between two independently trained networks rises in
    loss in the middle; a line trained as a subspace stays low along its length."""
    for seed in (0, 1):
        nll = {}
        for method in ("independent", "subspace"):
            tables = run_trial(make_config({"method": method, "shape": "line", "seed": seed, "alpha_grid": 5,
                                            "ensemble_samples": 0}))
            nll[method] = {e["point"]: e["nll"] for e in tables["evals"] if e["split"] == "test"}
        ind, sub = nll["independent"], nll["subspace"]
        assert ind["center"] > 2 * max(ind["endpoint_0"], ind["endpoint_1"]), ind
        assert sub["center"] < 1.5 * max(sub["endpoint_0"], sub["endpoint_1"]), sub


def test_fields_that_mean_nothing_for_a_shape_are_canonical():
    assert make_config({"shape": "point", "endpoints": 5, "layerwise": True}).endpoints == 1
    assert not make_config({"shape": "point", "layerwise": True}).layerwise
    assert make_config({"shape": "line", "endpoints": 6}).key() == make_config({"shape": "line"}).key()
    with pytest.raises(ConfigError, match="^method"):
        make_config({"method": "independent", "shape": "curve"})
