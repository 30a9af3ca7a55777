"""The GPU path on CUDA (issue 13): run with `python -m pytest -m gpu` on a machine with a GPU (CI has none).
Device-resident data in the training dtype, bf16 autocast with channels_last, packed trials equal to separate
trials on the GPU, and fractional trials sharing one GPU through Ray."""

from __future__ import annotations

import pytest
import torch

from trainers.config import make_config
from trainers.pack import run_pack
from trainers.train import Run, run_trial

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with -m gpu there)")]

CIFAR = dict(dataset="synthetic_cifar10", model="cresnet20", epochs=1, warmup_epochs=0, batch_size=128,
             augment=True, alpha_grid=3, ensemble_samples=2, device="cuda")


def test_data_stays_on_the_gpu_in_the_training_dtype():
    run = Run(make_config({**CIFAR, "amp": True, "channels_last": True}))
    assert run.data.train_x.is_cuda and run.data.train_x.dtype == torch.bfloat16
    assert run.data.test_x.is_cuda and run.data.test_x.dtype == torch.float32  # evaluation keeps fp32 inputs
    perm = run.start_epoch(1)
    x, y = run.batch(perm, 0)
    assert x.is_cuda and x.dtype == torch.bfloat16 and x.shape == (128, 3, 32, 32)


def test_a_bf16_channels_last_trial_runs_and_records_its_options():
    tables = run_trial(make_config({**CIFAR, "amp": True, "channels_last": True}))
    row = tables["trials"][0]
    assert row["ran_on"].startswith("cuda") and row["amp"] and row["channels_last"]
    assert all(0 <= e["accuracy"] <= 1 for e in tables["evals"])


def test_packed_trials_equal_separate_trials_on_the_gpu():
    cfgs = [make_config({**CIFAR, "shape": "line", "seed": s}) for s in range(4)]  # fp32: comparable numbers
    alone = [run_trial(c) for c in cfgs]
    packed = run_pack(cfgs)
    for a, p in zip(alone, packed, strict=True):
        assert [e["train_loss"] for e in p["epochs"]] == pytest.approx([e["train_loss"] for e in a["epochs"]],
                                                                        rel=1e-3)
        assert [e["nll"] for e in p["evals"]] == pytest.approx([e["nll"] for e in a["evals"]], rel=1e-2)


def test_the_pack_footprint_estimate_bounds_what_a_pack_allocates():
    """The packing check's estimate (trainers/pack.footprint) against the allocator's peak for a pack of 4
    during training: within a factor of two either way, so refusals are neither far too strict nor unsafe."""
    from trainers.pack import footprint

    cfgs = [make_config({**CIFAR, "shape": "line", "seed": s, "ensemble_samples": 0}) for s in range(4)]
    per, shared = footprint(cfgs[0])
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run_pack(cfgs)
    peak = torch.cuda.max_memory_allocated() - base
    assert 0.5 <= (4 * per + shared) / peak <= 2.0, (4 * per + shared, peak)
