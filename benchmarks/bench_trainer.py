"""Trainer speed, all measured in one run (run on demand: `python benchmarks/bench_trainer.py`).

1. Step time of every subspace shape against standard training (a plain nn.Module and the same optimizer),
   same model and batch, for `mlp` and `cresnet20`. Targets: line <= 1.10x, simplex m=6 <= 1.25x.
2. Trial throughput (training samples/s of `run_trial`, point shape) against a minimal hand-written
   PyTorch loop on the same model and data (digits). Target >= 0.9x.
3. MIMO: one training step (M = 3 heads, batch repetitions 4) against one standard step of the same
   backbone on the same number of rows (target <= 1.2x), and against a standard step on the plain batch
   (what an epoch costs more: the batch repetitions).
4. SWA: a whole trial against standard training with the same recipe (target: adds <= 5%), split into the
   training epochs and the final evaluation.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from trainers import data as datasets
from trainers import methods
from trainers.config import make_config
from trainers.models import build
from trainers.subspace import Subspace
from trainers.train import run_trial

SHAPES = [("point", 1, False), ("line", 2, False), ("line", 2, True), ("curve", 2, False),
          ("simplex", 3, False), ("simplex", 6, False), ("simplex", 6, True)]


def timed(steps: dict, rounds: int, per_round: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per step of each function, interleaved round by round so that load from other
    processes falls on all of them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(per_round):
                step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t) / per_round)
    return {k: statistics.median(v) for k, v in times.items()}


def step_times(model: str, in_shape: tuple, batch: int, rounds: int, per_round: int, device: torch.device) -> None:
    x = torch.randn(batch, *in_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    torch.manual_seed(0)
    plain = build(model, in_shape, 10, 16, True, 0.0).to(device).train()
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def plain_step():
        loss = F.cross_entropy(plain(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps_by_name = {"standard": plain_step}
    for shape, m, layerwise in SHAPES:
        torch.manual_seed(0)
        sub = Subspace(lambda: build(model, in_shape, 10, 16, True, 0.0), shape, m, layerwise).to(device).train()
        sopt = torch.optim.SGD(sub.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator(device=device).manual_seed(0)

        def sub_step(sub=sub, sopt=sopt, g=g):
            sub.set_point(sub.draw(g))
            loss = F.cross_entropy(sub.model(x), y)
            if sub.n_endpoints > 1:
                loss = loss + sub.cos2(g)
            sopt.zero_grad(set_to_none=True)
            loss.backward()
            sopt.step()

        name = f"{shape}{f' m={m}' if shape == 'simplex' else ''}{' layerwise' if layerwise else ''}"
        steps_by_name[name] = sub_step
    t = timed(steps_by_name, rounds, per_round)
    base = t.pop("standard")
    print(f"\n{model}, batch {batch}: standard training {base * 1e3:.2f} ms/step")
    print(f"  {'shape':<22}{'ms/step':>10}{'ratio':>8}")
    for name, v in t.items():
        print(f"  {name:<22}{v * 1e3:>10.2f}{v / base:>7.2f}x")


def throughput(epochs: int, device: torch.device) -> None:
    """Samples/s over training epochs: run_trial (point) vs a minimal loop with the same data and model."""
    cfg = make_config({"shape": "point", "epochs": epochs, "eval_every": 0, "checkpoint_every": 0,
                       "ensemble_samples": 0, "warmup_epochs": 0, "device": str(device)})
    t = time.perf_counter()
    tables = run_trial(cfg)
    trial_wall = time.perf_counter() - t
    trial_sps = sum(r["samples_per_s"] for r in tables["epochs"][1:]) / (epochs - 1)

    d = datasets.load("digits").to(device)
    torch.manual_seed(0)
    model = build("mlp", d.in_shape, d.classes, 16, True, 0.0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    n, b = len(d.train_y), cfg.batch_size
    total = (n // b) * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    rates = []
    for _ in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(n, device=device)
        for i in range(n // b):
            idx = perm[i * b:(i + 1) * b]
            loss = F.cross_entropy(model(d.train_x[idx]), d.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        rates.append((n // b) * b / (time.perf_counter() - t))
    hand_sps = sum(rates[1:]) / (epochs - 1)
    print(f"\ntrial throughput (digits mlp, point, {epochs} epochs): run_trial {trial_sps:,.0f} samples/s, "
          f"hand-written loop {hand_sps:,.0f} samples/s -> {trial_sps / hand_sps:.2f}x "
          f"(whole trial incl. data load + final eval: {trial_wall:.2f} s)")


def mimo_steps(model: str, in_shape: tuple, dataset: str, batch: int, rounds: int, per_round: int,
               device: torch.device) -> None:
    """A MIMO step through the method (head shuffles, stacked inputs, M heads) against plain steps."""
    cfg = make_config({"method": "mimo", "shape": "point", "model": model, "dataset": dataset, "width": 16,
                       "mimo_heads": 3, "mimo_batch_repeats": 4})
    rows = batch * cfg.mimo_batch_repeats
    n = 2 * rows
    d = datasets.Data(torch.randn(n, *in_shape), torch.randint(0, 10, (n,)), torch.randn(8, *in_shape),
                      torch.randint(0, 10, (8,)), torch.randn(8, *in_shape), torch.randint(0, 10, (8,)), 10).to(device)
    torch.manual_seed(0)
    mimo = methods.build(cfg, d, device)
    mopt = torch.optim.SGD(mimo.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator(device=device).manual_seed(0)
    x, y = d.train_x[:batch], d.train_y[:batch]

    def mimo_step():
        mopt.zero_grad(set_to_none=True)
        mimo.train_step(x, y, g)
        mopt.step()

    torch.manual_seed(0)
    plain = build(model, in_shape, 10, 16, True, 0.0).to(device).train()
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def plain_step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(plain(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    xr, yr = d.train_x[:rows], d.train_y[:rows]
    t = timed({"standard, same rows": lambda: plain_step(xr, yr), "standard, plain batch": lambda: plain_step(x, y),
               "mimo": mimo_step}, rounds, per_round)
    print(f"\nMIMO step ({model}, M = 3, batch {batch} x {cfg.mimo_batch_repeats} repetitions = {rows} rows): "
          f"{t['mimo'] * 1e3:.2f} ms")
    print(f"  vs a standard step on the same {rows} rows ({t['standard, same rows'] * 1e3:.2f} ms): "
          f"{t['mimo'] / t['standard, same rows']:.2f}x (target <= 1.2x)")
    print(f"  vs a standard step on the plain batch of {batch} ({t['standard, plain batch'] * 1e3:.2f} ms): "
          f"{t['mimo'] / t['standard, plain batch']:.2f}x (the batch repetitions' cost per epoch)")


def swa_overhead(epochs: int, repeats: int, device: torch.device) -> None:
    """Whole trials, interleaved: SWA (constant LR, collecting the last quarter) against standard training."""
    common = {"shape": "point", "epochs": epochs, "checkpoint_every": 0, "ensemble_samples": 5,
              "device": str(device)}
    cfgs = {"standard": make_config(common),
            "swa": make_config({**common, "method": "swa", "swa_lr": 0.02})}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cfgs}
    for _ in range(repeats):
        for name, cfg in cfgs.items():
            t = time.perf_counter()
            tables = run_trial(cfg)
            total = time.perf_counter() - t
            times[name].append((total, sum(r["seconds"] for r in tables["epochs"])))
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in times.items()}
    (s_total, s_train), (w_total, w_train) = med["standard"], med["swa"]
    print(f"\nSWA trial (digits mlp, {epochs} epochs, median of {repeats}): {w_total:.2f} s vs standard "
          f"{s_total:.2f} s -> {w_total / s_total:.3f}x (target <= 1.05x); training epochs {w_train:.2f} s vs "
          f"{s_train:.2f} s ({w_train / s_train:.3f}x), the rest (data, final evaluation of the average and "
          f"{cfgs['swa'].ensemble_samples} snapshots) {w_total - w_train:.2f} s vs {s_total - s_train:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    step_times("mlp", (1, 8, 8), 64, args.rounds, 50, device)
    step_times("cresnet20", (3, 32, 32), 128, args.rounds, 1 if device.type == "cpu" else 20, device)
    throughput(10, device)
    mimo_steps("mlp", (1, 8, 8), "digits", 64, args.rounds, 50, device)
    mimo_steps("cresnet20", (3, 32, 32), "cifar10", 128, args.rounds, 1 if device.type == "cpu" else 20, device)
    swa_overhead(40, 5, device)


if __name__ == "__main__":
    main()
