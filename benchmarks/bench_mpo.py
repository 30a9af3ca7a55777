"""Loss-patterns (`method: mpo`) speed: many cells of the plane in one vmapped pass against one forward per
cell (the reference implementation's loop), all measured in one run (`python benchmarks/bench_mpo.py`).

For each model: a training step over 2 x `--cells` cells (forward, loss, backward into origin, right, up
and s) and a heat-map pass (no gradient) over the same cells, each as
- loop: one forward per cell, one backward for the summed loss (the reference code's way);
- vmap k: `MPO.cell_logits`, k cells per vmapped pass (torch.func.vmap over the cells' flat weights),
  a backward per pass (what `mpo_chunk: k` does).
Printed: seconds per step and the loop's time divided by each (the speed-up).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_trainer import timed

from trainers import data as datasets
from trainers import methods
from trainers.config import make_config

MODELS = [("mlp", 16, True), ("cnn", 16, False), ("cnn6", 4, True), ("cnn6", 16, True)]


def bench(model: str, width: int, bn: bool, d: datasets.Data, cells: int, batch: int, chunks: list[int],
          rounds: int, device: torch.device) -> None:
    cfg = make_config(dict(method="mpo", shape="point", model=model, width=width, batchnorm=bn, dataset="digits",
                           mpo_pattern="random", mpo_size=16, mpo_cells=cells))
    torch.manual_seed(0)
    m = methods.build(cfg, d, device).train()
    g = torch.Generator(device=device).manual_seed(0)
    xy = torch.cat([m.sample(m.black_xy, g), m.sample(m.white_xy, g)])
    sign = torch.where(torch.arange(len(xy), device=device) < len(xy) // 2, 1.0, -1.0) / (len(xy) // 2)
    x, y = d.train_x[:batch], d.train_y[:batch]

    def loop_step() -> None:
        m.zero_grad(set_to_none=True)
        losses = []
        for w in m.plane(xy):
            m.sub.set_flat(w)
            losses.append(F.cross_entropy(m.sub.model(x), y))
        (sign * torch.stack(losses)).sum().backward()

    def vmap_step(k: int) -> None:
        m.zero_grad(set_to_none=True)
        for i in range(0, len(xy), k):
            ce = F.cross_entropy(m.cell_logits(xy[i:i + k], x).flatten(0, 1), y.repeat(len(xy[i:i + k])),
                                 reduction="none").view(-1, len(y)).mean(1)
            (sign[i:i + k] * ce).sum().backward()

    @torch.no_grad()
    def loop_eval() -> None:
        for w in m.plane(xy):
            m.sub.set_flat(w)
            m.sub.model(x)

    @torch.no_grad()
    def vmap_eval(k: int) -> None:
        for i in range(0, len(xy), k):
            m.cell_logits(xy[i:i + k], x)

    steps = {"train loop": loop_step, **{f"train vmap {k}": (lambda k=k: vmap_step(k)) for k in chunks},
             "eval loop": loop_eval, **{f"eval vmap {k}": (lambda k=k: vmap_eval(k)) for k in chunks}}
    t = timed(steps, rounds, 1, warmup=1)
    name = f"{model} w{width}{' BN' if bn else ''} ({m.sub.n_params:,} params)"
    for what in ("train", "eval"):
        base = t[f"{what} loop"]
        parts = [f"loop {base * 1e3:7.1f} ms"] + [f"vmap {k}: {t[f'{what} vmap {k}'] * 1e3:7.1f} ms "
                                                   f"({base / t[f'{what} vmap {k}']:.2f}x)" for k in chunks]
        print(f"{name:<32}{what:<6}" + "  ".join(parts), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=50, help="cells of each colour per step (paper: 50)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--chunks", default="10,100", help="cells per vmapped pass, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=",".join(f"{m}:{w}" for m, w, _ in MODELS),
                   help="model:width list, e.g. cnn:16,cnn6:4")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = datasets.load("digits").to(device)
    wanted = [tuple(s.split(":")) for s in a.models.split(",")]
    print(f"digits 8x8, {2 * a.cells} cells x batch {a.batch}, {device}, {a.threads} thread(s)")
    for model, width, bn in MODELS:
        if (model, str(width)) in wanted:
            bench(model, width, bn, d, a.cells, a.batch, [int(k) for k in a.chunks.split(",")], a.rounds, device)


if __name__ == "__main__":
    main()
