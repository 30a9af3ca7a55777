"""Fashion-MNIST training throughput through basin against plain PyTorch, measured in one run (run on demand:
`python benchmarks/bench_fashion_mnist.py`; needs the data: `apt-get install dataset-fashion-mnist`, or
--data-dir with the idx files).

For the project's two models for 28 x 28 input, `mlp` (2 x 128 hidden, BatchNorm) and `cnn` (the
loss-patterns net: conv 8/32/64 + MLP 128), one training epoch (54,000 images: the training file less the
10% validation split) of standard training (`shape: point`) through basin's real path (`run_trial`: the
idx files read by trainers/data.py, the subspace wrapper, the method's step, the schedule, the epoch's
bookkeeping), in images/s from its epochs row, against the same model built by the same function, trained
by a minimal loop over the same tensors (same batch size, SGD with the same hyperparameters, the same
cosine schedule, a fresh permutation per epoch). Target: basin >= 0.9x the plain loop. Runs alternate
(basin, plain, basin, plain, ...) so load from other processes falls on both alike; the ratio is of the
best run of each (the one least disturbed by other processes on a shared machine), the medians' beside it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from trainers import data as datasets
from trainers.config import TrialConfig, make_config
from trainers.models import build
from trainers.train import run_trial


def basin_epoch(cfg: TrialConfig) -> tuple[float, float]:
    """(images/s of the training epoch as basin records it, seconds of the whole trial: data, epoch, eval)."""
    t = time.perf_counter()
    rows = run_trial(cfg)
    return rows["epochs"][0]["samples_per_s"], time.perf_counter() - t


def plain_epoch(cfg: TrialConfig, d: datasets.Data) -> float:
    """images/s of one epoch of a hand-written loop: the same model, optimizer, schedule and batches."""
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, d.in_shape, d.classes, cfg.width, cfg.batchnorm, cfg.dropout).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n, b = len(d.train_y), cfg.batch_size
    steps = n // b
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    t = time.perf_counter()
    perm = torch.randperm(n, generator=g)
    for i in range(steps):
        idx = perm[i * b:(i + 1) * b]
        loss = F.cross_entropy(model(d.train_x[idx]), d.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return steps * b / (time.perf_counter() - t)


def compare(model: str, data_dir: str, batch: int, repeats: int) -> None:
    # Standard training in both (shape point); no validation, checkpoints or extra evaluation points, so the
    # epoch basin times is the training steps and its own per-step bookkeeping, nothing the plain loop skips.
    cfg = make_config({"dataset": "fashion_mnist", "data_dir": data_dir, "model": model, "shape": "point",
                       "epochs": 1, "warmup_epochs": 0, "batch_size": batch, "eval_every": 0,
                       "checkpoint_every": 0, "ensemble_samples": 0, "save_predictions": False, "device": "cpu"})
    t = time.perf_counter()
    d = datasets.load(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction)  # the tensors basin trains on
    load_s = time.perf_counter() - t
    ours, plain, trial_s = [], [], []
    for _ in range(repeats):
        rate, whole = basin_epoch(cfg)
        ours.append(rate)
        trial_s.append(whole)
        plain.append(plain_epoch(cfg, d))
    o, p = max(ours), max(plain)
    print(f"{model:<4} batch {batch}, {len(d.train_y):,} images/epoch, best of {repeats}: basin {o:,.0f} img/s, "
          f"plain PyTorch {p:,.0f} img/s -> {o / p:.2f}x (target >= 0.90x; medians "
          f"{statistics.median(ours) / statistics.median(plain):.2f}x); basin runs "
          f"{', '.join(f'{v:,.0f}' for v in ours)}, plain {', '.join(f'{v:,.0f}' for v in plain)}; "
          f"whole basin trial {statistics.median(trial_s):.1f} s (data load alone {load_s:.1f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="~/.cache/basin/data", help="else Debian's /usr/share/datasets copy")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="epochs of each, alternating (cnn: at most 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    p.add_argument("--models", default="mlp,cnn")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    for model in args.models.split(","):
        compare(model, args.data_dir, args.batch_size, args.repeats if model == "mlp" else min(args.repeats, 3))


if __name__ == "__main__":
    main()
