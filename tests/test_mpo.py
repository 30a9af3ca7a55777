"""Loss patterns (`method: mpo`): the plane's geometry, the objective, vmapped cells, pattern files and their
errors, a fitted icon on digits, and a sweep through `basin run` into Parquet, MLflow and the report."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

import analysis
from trainers import data as datasets
from trainers import methods, patterns
from trainers.config import ConfigError, make_config
from trainers.results import load_state
from trainers.train import run_trial

MPO = dict(method="mpo", shape="point", preset="loss_patterns", dataset="digits", batch_size=64, mpo_cells=6,
           mpo_chunk=4, mpo_margin=1, mpo_eval_examples=100, eval_every=0, epochs=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny vmapped networks: a second thread only adds synchronisation (10x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def build(digits, **kw):
    cfg = make_config({**MPO, **kw})
    torch.manual_seed(cfg.seed)
    return methods.build(cfg, digits, torch.device("cpu"))


def write_pbm(path, rows: list[str]) -> str:
    """A plain (P1) PBM: 1 = black."""
    path.write_text(f"P1\n{len(rows[0])} {len(rows)}\n" + "\n".join(" ".join(r) for r in rows) + "\n")
    return str(path)


@pytest.mark.parametrize("model,bn", [("mlp", False), ("cnn6", True)])
def test_axes_stay_orthogonal_and_equally_long_after_every_step(digits, model, bn):
    m = build(digits, model=model, width=2, batchnorm=bn, mpo_cells=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)  # large steps: the plane moves a lot
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        idx = torch.randperm(len(digits.train_y), generator=g)[:32]
        opt.zero_grad()
        m.train_step(digits.train_x[idx], digits.train_y[idx], g)
        opt.step()
        with torch.no_grad():
            u, v = m.axes()
            assert abs(float(u @ v)) / float(u.norm() * v.norm()) < 1e-5, i
            assert float(v.norm()) == pytest.approx(float(u.norm()), rel=1e-5)


def test_point_zero_zero_is_the_origin_and_cells_step_by_s_along_u_and_v(digits):
    m = build(digits, model="cnn")
    with torch.no_grad():
        w = m.plane(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        u, v = m.axes()
    assert torch.equal(w[0], m.sub.W[0])
    assert torch.allclose(w[1] - w[0], 0.1 * u, atol=1e-6) and torch.allclose(w[2] - w[0], 0.1 * v, atol=1e-6)
    assert m.scale.item() == pytest.approx(0.1)
    # the origin cell is the picture's centre cell: the heart's (4, 4) is black, and it is at (0, 0)
    black = patterns.load("heart")
    x, y = patterns.cell_xy(black.shape)
    assert (x[4, 4], y[4, 4]) == (0, 0) and black[4, 4]


@pytest.mark.parametrize("model,bn", [("cnn", False), ("cnn6", True), ("mlp", True)])
def test_vmapped_cells_equal_a_loop_over_cells(digits, model, bn):
    m = build(digits, model=model, width=4, batchnorm=bn).eval()
    xy = torch.tensor([[0.0, 0.0], [-3.0, 2.0], [4.0, -1.0], [1.0, 1.0]])
    x = digits.test_x[:32]
    with torch.no_grad():
        batched = m.cell_logits(xy, x)
        looped = []
        for w in m.plane(xy):
            m.sub.set_flat(w)
            looped.append(m.sub.model(x))
    assert batched.shape == (4, 32, 10)
    assert torch.allclose(batched, torch.stack(looped), atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # different cells, different networks


def test_gradients_reach_origin_right_up_and_the_scale(digits):
    m = build(digits, model="cnn6", width=2, batchnorm=True, mpo_cells=2)
    g = torch.Generator().manual_seed(0)
    m.train_step(digits.train_x[:32], digits.train_y[:32], g)
    assert (m.sub.W.grad.abs().sum(1) > 0).all()          # origin, right, up
    bn_part = m.sub.W.grad[:, m.sub.n_reg:]               # BN γ/β (and biases) reach the plane too
    assert (bn_part.abs().sum(1) > 0).all()
    assert m.scale.grad is not None and m.scale.grad.abs() > 0


def test_white_cells_loss_is_capped(digits):
    """With a cap below every white cell's CE, the white cells add exactly -cap and no gradient: the step
    equals one over the black cells alone."""
    m = build(digits, model="mlp", width=4, mpo_cap=1e-3)
    x, y = digits.train_x[:64], digits.train_y[:64]
    step = m.train_step(x, y, torch.Generator().manual_seed(3))
    assert step.reg.item() == pytest.approx(-1e-3)
    grad = m.sub.W.grad.clone()
    m.zero_grad()
    g = torch.Generator().manual_seed(3)
    black = m.sample(m.black_xy, g)
    m.sample(m.white_xy, g)
    logits = m.cell_logits(black, x)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(len(black)))
    ce.backward()
    assert ce.item() == pytest.approx(step.loss.item(), rel=1e-5)
    assert torch.allclose(m.sub.W.grad, grad, atol=1e-7)


def test_interior_cells_are_skipped(digits, tmp_path):
    rows = ["000000000", "011111000", "011111000", "011111000", "011111000", "011111000",
            "000000000", "000000000", "000000000"]
    path = write_pbm(tmp_path / "square.pbm", rows)
    black = patterns.load(path)
    assert black.shape == (9, 9) and black.sum() == 25
    trained = patterns.trained(black)
    assert not trained[2:5, 2:5].any()            # the square's interior (black, all neighbours black)
    assert trained[1, 1:6].all() and trained[5, 1:6].all() and trained[1:6, 1].all()  # its black border
    assert trained[0, 0] and trained[6, 3]         # white cells touching it
    assert not trained[8, 8] and not trained[0:7, 7:].any()  # far white cells
    m = build(digits, model="cnn", mpo_pattern=path)
    x, y = patterns.cell_xy(black.shape)
    used = {tuple(c) for c in torch.cat([m.black_xy, m.white_xy]).int().tolist()}
    assert used == {(x[i, j], y[i, j]) for i, j in zip(*np.nonzero(trained), strict=True)}
    assert len(m.black_xy) == 25 - 9


def test_pictures_are_thresholded(tmp_path):
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)  # transparent background, opaque (white!) shape: black cells
    rgba[1:4, 1:3] = [255, 255, 255, 255]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "icon.png")
    assert patterns.load(str(tmp_path / "icon.png")).sum() == 6
    grey = np.full((4, 4), 250, dtype=np.uint8)
    grey[0, :2] = 20                                    # dark pixels are black
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert patterns.load(str(tmp_path / "grey.png")).tolist()[0] == [True, True, False, False]
    Image.fromarray(grey < 128).save(tmp_path / "bits.pbm")  # binary P4, through Pillow
    assert patterns.load(str(tmp_path / "bits.pbm")).sum() == 14   # True (white in mode 1) -> not black
    big = patterns.load("heart", size=18)
    assert big.shape == (18, 18) and big[8:10, 8:10].all() and not big[0].any()
    mask = patterns.load("random", size=10, fill=0.3, seed=1)
    assert mask.shape == (10, 10) and 10 < mask.sum() < 50
    assert np.array_equal(mask, patterns.load("random", size=10, fill=0.3, seed=1))
    assert not np.array_equal(mask, patterns.load("random", size=10, fill=0.3, seed=2))


def test_bad_patterns_get_one_line_errors_before_anything_runs(tmp_path):
    (tmp_path / "empty.pbm").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not a picture at all\n")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    write_pbm(tmp_path / "flat.pbm", ["111", "111"])
    (tmp_path / "broken.pbm").write_text("P1\n3 3\n1 0\n")
    cases = {"empty.pbm": "empty file", "notes.png": "not a PNG or PBM", "photo.jpg": "JPEG",
             "flat.pbm": "every cell is black", "missing.png": "no such file", "broken.pbm": ""}
    for name, why in cases.items():
        with pytest.raises(ConfigError) as e:
            make_config({**MPO, "mpo_pattern": str(tmp_path / name)})
        msg = str(e.value)
        assert msg.startswith("mpo_pattern:") and name in msg and why in msg and "\n" not in msg, msg
    for values, field in [({"mpo_pattern": "random"}, "mpo_pattern"), ({"shape": "line"}, "shape"),
                          ({"mpo_fill": 1.0}, "mpo_fill"), ({"mpo_cells": 0}, "mpo_cells")]:
        with pytest.raises(ConfigError) as e:
            make_config({**MPO, **values})
        assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value)
    # the command line: one line on stderr, exit status 2, nothing written
    cfg = tmp_path / "t.yaml"
    cfg.write_text(json.dumps({**MPO, "mpo_pattern": str(tmp_path / "flat.pbm")}))
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", str(cfg), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "flat.pbm" in out.stderr
    assert not (tmp_path / "r").exists()


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    from conftest import Interrupt, stop_after

    cfg = make_config({**MPO, "model": "mlp", "width": 2, "epochs": 2, "eval_every": 1, "mpo_margin": 0})
    whole = run_trial(cfg)
    with pytest.raises(Interrupt):
        run_trial(cfg, stop_after(tmp_path, 1))
    resumed = run_trial(cfg, resume=load_state(tmp_path / "checkpoints" / "k.pt"))
    for table in ("epochs", "evals"):
        drop = ("seconds", "samples_per_s", "coords")
        assert [{k: v for k, v in r.items() if k not in drop} for r in resumed[table]] == \
            [{k: v for k, v in r.items() if k not in drop} for r in whole[table]], table


def test_a_small_icon_fitted_on_digits_separates_its_colours():
    """The heart (9 x 9) on digits, 80 steps of an MLP: black cells classify better on test data than white
    ones. Measured with seeds 0-5: gap 0.59-0.71, black cells 0.85-0.91; the bounds leave a wide margin."""
    cfg = make_config({**MPO, "model": "mlp", "width": 8, "lr": 5e-3, "batch_size": 64, "epochs": 4,
                       "mpo_cells": 10, "mpo_chunk": 20, "mpo_eval_examples": 200, "seed": 1})
    evals = {(e["split"], e["point"]): e for e in run_trial(cfg)["evals"]}
    gap = evals[("test", "gap")]["accuracy"]
    black, white = evals[("test", "black")]["accuracy"], evals[("test", "white")]["accuracy"]
    assert gap == pytest.approx(black - white)
    assert gap > 0.3 and black > 0.6, (black, white)
    cells = [e for (s, _), e in evals.items() if s == "test" and e["kind"] == "cell"]
    assert len(cells) == (9 + 2) ** 2 and {e["colour"] for e in cells} == {"black", "white", ""}
    assert evals[("test", "origin")]["coords"].tolist() == [0.0, 0.0]


def test_an_mpo_sweep_through_basin_run_parquet_mlflow_and_the_report(ray_local, tmp_path):
    from conftest import write_sweep

    from orchestrator.runner import run_sweep
    from orchestrator.sweep import load_sweep

    base = {**MPO, "model": "cnn", "batchnorm": False, "lr": 3e-3, "mpo_pattern": "random", "mpo_size": 6}
    path = write_sweep(tmp_path, f"name: mpo\nbase: {json.dumps(base)}\nresults: {tmp_path / 'results'}\n"
                                 "axes:\n  mpo_fill: [0.3, 0.7]\n  seed: [0, 1]\n", "mpo.yaml")
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=1)
    assert summary.ok and summary.completed == summary.total == 4
    r = analysis.load(sweep.dir)
    assert set(r.trials.main_point) == {"black"}
    cells = r.evals[r.evals.kind == "cell"]
    assert len(cells) == 4 * 2 * (6 + 2) ** 2 and set(cells.split) == {"train", "test"}
    gaps = analysis.colour_gaps(r)
    assert len(gaps) == 4 and np.allclose(gaps.gap_accuracy, gaps.black_accuracy - gaps.white_accuracy)
    client = MlflowClient(tracking_uri=sweep.mlflow)
    runs = client.search_runs([client.get_experiment_by_name("mpo").experiment_id], "tags.`basin.role` = 'trial'")
    assert len(runs) == 4
    for run in runs:  # the colour means and the gap are mirrored; the hundreds of cells stay in Parquet
        assert "test/gap/accuracy" in run.data.metrics and "test/black/nll" in run.data.metrics
        assert not any("/cell_" in k for k in run.data.metrics)
    (rep,) = analysis.build_report(sweep.dir, tmp_path / "report")
    for name in ("loss_patterns", "loss_patterns_gap"):
        item = rep.get(name, "figure")
        assert not item.skipped and (tmp_path / "report" / "mpo" / item.files[0]).stat().st_size > 10_000
    table = rep.get("loss_patterns_gap", "table").table.data
    assert sorted(table.mpo_fill) == [0.3, 0.7] and (table.n == 2).all()
