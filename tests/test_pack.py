"""Packed trials (issue 13), on the CPU: K trials trained as one batched computation give the numbers each
gives alone, resume like one, and the device augmentation draws what the reference transforms draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Interrupt, Keep, stop_after

from trainers.config import make_config, pack_key, pack_problem
from trainers.data import augment_batch
from trainers.pack import run_pack
from trainers.results import FolderSink, load_state
from trainers.train import run_trial

FAST = dict(epochs=3, warmup_epochs=1, alpha_grid=3, ensemble_samples=2, checkpoint_every=1)


@pytest.mark.parametrize("kw", [dict(shape="point"), dict(shape="line", augment=True, model="cnn"),
                                dict(shape="simplex", endpoints=3, layerwise=True),
                                dict(method="swa", shape="point", swa_start=1, epochs=4)])
def test_packed_trials_equal_separate_trials(tmp_path, kw):
    cfgs = [make_config({**FAST, **kw, "seed": s, "label_noise": 0.1 * s, "noise_seed": s}) for s in range(3)]
    alone_sinks = [Keep() for i in range(3)]
    packed_sinks = [Keep() for i in range(3)]
    alone = [run_trial(c, s) for c, s in zip(cfgs, alone_sinks, strict=True)]
    packed = run_pack(cfgs, packed_sinks)
    for a, p, sa, sp in zip(alone, packed, alone_sinks, packed_sinks, strict=True):
        for key in ("train_loss", "train_acc", "val_acc", "val_nll", "lr", "reg"):
            assert [r[key] for r in p["epochs"]] == pytest.approx([r[key] for r in a["epochs"]], abs=1e-5), key
        assert [(e["point"], e["split"]) for e in p["evals"]] == [(e["point"], e["split"]) for e in a["evals"]]
        for ea, ep in zip(a["evals"], p["evals"], strict=True):
            assert ep["nll"] == pytest.approx(ea["nll"], abs=1e-5) and abs(ep["accuracy"] - ea["accuracy"]) <= 0.003
        for name, w in sa.state["model"].items():  # the weights and BatchNorm statistics of each trial
            assert torch.allclose(sp.state["model"][name].float(), w.float(), atol=1e-5), name
        ta, tp = a["trials"][0], p["trials"][0]
        assert (tp["seed"], tp["label_noise_actual"]) == (ta["seed"], ta["label_noise_actual"])
    assert len({r["trials"][0]["label_noise_actual"] for r in packed}) == 3  # each its own noisy labels


def test_a_pack_resumes_from_its_checkpoints_and_a_packed_checkpoint_resumes_alone(tmp_path):
    cfgs = [make_config({**FAST, "shape": "line", "epochs": 4, "seed": s}) for s in range(2)]
    whole = [run_trial(c) for c in cfgs]
    with pytest.raises(Interrupt):
        run_pack(cfgs, [FolderSink(tmp_path / "0", trial_key="k"), stop_after(tmp_path / "1", 2)])
    states = [load_state(tmp_path / str(i) / "checkpoints" / "k.pt") for i in range(2)]
    assert [s["epoch"] for s in states] == [2, 2]
    resumed = run_pack(cfgs, resumes=states)
    alone = run_trial(cfgs[1], resume=states[1])  # the same checkpoint, continued outside a pack
    for w, r in zip(whole, resumed, strict=True):
        assert [e["train_loss"] for e in r["epochs"]] == pytest.approx([e["train_loss"] for e in w["epochs"]],
                                                                        abs=1e-5)
    assert [e["nll"] for e in alone["evals"]] == pytest.approx([e["nll"] for e in whole[1]["evals"]], abs=1e-5)


def test_what_packs_together():
    a = make_config({"shape": "line", "seed": 0})
    assert pack_key(a) == pack_key(make_config({"shape": "line", "seed": 5, "label_noise": 0.2, "noise_seed": 3}))
    assert pack_key(a) != pack_key(make_config({"shape": "line", "lr": 0.1}))
    assert pack_problem([a, make_config({"shape": "line", "seed": 1})]) == ""
    assert "differ" in pack_problem([a, make_config({"shape": "simplex", "endpoints": 3})])
    assert "mimo does not pack" in pack_problem([make_config({"method": "mimo", "shape": "point"})] * 2)
    with pytest.raises(ValueError, match="cannot be packed: method independent"):
        run_pack([make_config({"method": "independent", "shape": "line"})] * 2)


def test_device_augmentation_draws_the_reference_crops_and_flips():
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip draw the offset uniformly from 0..8 on
    each axis and flip with probability 1/2; the batched device version must draw the same distribution."""
    from torchvision import transforms as T

    n, side = 4000, 32
    img = torch.arange(side * side, dtype=torch.float32).view(1, side, side) + 1  # every pixel unique, > 0

    def offsets(out: torch.Tensor) -> list[tuple[int, int, bool]]:
        """(row offset, column offset, flipped) of a crop of the padded image, read off its pixels."""
        res = []
        for o in out:
            o = o[0]
            both = (o[:, 1:] > 0) & (o[:, :-1] > 0)  # neighbouring image pixels (not padding)
            flipped = bool((o[:, 1:] < o[:, :-1])[both].any())
            if flipped:
                o = o.flip(1)
            r, c = (o > 0).nonzero()[0].tolist()
            v = int(o[r, c]) - 1
            res.append((v // side - r + 4, v % side - c + 4, flipped))
        return res

    g = torch.Generator().manual_seed(0)
    ours = offsets(augment_batch(img.expand(n, 1, side, side).clone(), "crop_flip", g))
    torch.manual_seed(0)
    ref_t = T.Compose([T.RandomCrop(side, padding=4), T.RandomHorizontalFlip()])
    ref = offsets(torch.stack([ref_t(img) for _ in range(n)]))

    def histogram(draws: list[tuple[int, int, bool]]) -> np.ndarray:
        h = np.zeros((9, 9, 2))
        for r, c, f in draws:
            h[r, c, int(f)] += 1
        return h / len(draws)

    ho, hr = histogram(ours), histogram(ref)
    assert ho.sum() == pytest.approx(1) and hr.sum() == pytest.approx(1)
    # both uniform over the 162 outcomes: total variation from uniform and from each other stays small
    uniform = np.full_like(ho, 1 / 162)
    assert 0.5 * np.abs(ho - uniform).sum() < 0.12 and 0.5 * np.abs(hr - uniform).sum() < 0.12
    assert 0.5 * np.abs(ho - hr).sum() < 0.15
    assert abs(ho[..., 1].sum() - 0.5) < 0.03 and abs(hr[..., 1].sum() - 0.5) < 0.03


def test_channels_last_gives_the_numbers_of_the_standard_layout():
    base = {**FAST, "shape": "line", "model": "cnn", "augment": True}
    plain, nhwc = run_trial(make_config(base)), run_trial(make_config({**base, "channels_last": True}))
    assert [e["train_loss"] for e in nhwc["epochs"]] == pytest.approx([e["train_loss"] for e in plain["epochs"]],
                                                                      abs=1e-4)
    assert [e["nll"] for e in nhwc["evals"]] == pytest.approx([e["nll"] for e in plain["evals"]], abs=1e-4)


@pytest.mark.slow  # compiling takes a minute or more on two CPU cores
def test_compiled_model_gives_the_same_numbers_and_reports_its_compile_time():
    base = {**FAST, "shape": "line", "epochs": 2}
    eager, compiled = run_trial(make_config(base)), run_trial(make_config({**base, "compile": True}))
    assert compiled["trials"][0]["compile_seconds"] > 0 and eager["trials"][0]["compile_seconds"] is None
    assert [e["train_loss"] for e in compiled["epochs"]] == pytest.approx(
        [e["train_loss"] for e in eager["epochs"]], abs=1e-4)
    assert [e["nll"] for e in compiled["evals"]] == pytest.approx([e["nll"] for e in eager["evals"]], abs=1e-4)
