"""`mpo` (Skorokhodov & Burtsev, "Loss Patterns of Neural Networks"): multi-point optimisation of a plane in
weight space whose loss landscape draws a binary picture.

Three weight vectors (origin, right, up; independent Xavier initialisations) are the stacked weights of a
Subspace. They span the plane w(x, y) = origin + s·(x·u + y·v), with u = right − origin, v = up − origin
made orthogonal to u (Gram–Schmidt) and rescaled to |u|, and a learnable scale s. The pattern's cell at
(x, y) (trainers/patterns.py: the centre cell is the origin) must have low cross-entropy when black and
high when white: each step samples `mpo_cells` cells of each colour (only cells with a neighbour of the
other colour) and minimises mean CE(black) − mean min(CE(white), mpo_cap) on one batch. Cells run
`mpo_chunk` at a time in one vmapped pass (torch.func.vmap over the flat weights of each cell), each chunk
with its own backward, so memory stays bounded however many cells a step uses.

BatchNorm follows the paper's appendix C: γ is stored zero-mean and 0.5 is added back in forward, and
statistics are always the batch's own (PlaneBatchNorm).

Evaluation: the origin as an ordinary point, plus heat maps over the picture's grid grown by `mpo_margin`
cells: one evals row per cell and split (train and test, `mpo_eval_examples` examples each) with kind
"cell", coords (x, y) and the cell's colour; the mean of each colour's cells (points "black" and "white",
kind "colour") and their difference (point "gap", kind "gap": black − white, per metric).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainers import patterns
from trainers.methods.base import Method, Point, Step
from trainers.metrics import classification_metrics
from trainers.subspace import Subspace

GAMMA_OFFSET = 0.5  # γ = stored + 0.5; stored γ ~ U(-0.5, 0.5), i.e. γ ~ U(0, 1) as in the paper's PyTorch
METRICS = ("accuracy", "nll", "brier", "ece")


class PlaneBatchNorm(nn.Module):
    """BatchNorm for networks on a plane (appendix C). Gram–Schmidt of γ vectors near 1 (far from
    orthogonal) would make v's γ mostly negative, so γ is stored zero-mean and the offset is added back in
    forward. Statistics are always the batch's own: running statistics would belong to no point of the
    plane, and vmapped cells cannot update buffers."""

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.rand(features) - GAMMA_OFFSET)
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight + GAMMA_OFFSET, self.bias, True, 0.0, self.eps)


def plane_model(make: Callable[[], nn.Module]) -> nn.Module:
    """A fresh network for one of the plane's vectors: BatchNorm layers become PlaneBatchNorm, and every
    conv/linear weight is Xavier-initialised (normal), as in the paper; biases keep their own init."""
    model = make()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, PlaneBatchNorm(child.num_features, child.eps))
    for p in model.parameters():
        if p.dim() >= 2:
            nn.init.xavier_normal_(p)
    return model


class MPO(Method):
    main = "black"   # the trial is judged by its black cells (and `gap`); no ensemble of its own
    ensemble = ""

    def build(self) -> Subspace:
        c = self.cfg
        self.black = patterns.load(c.mpo_pattern, c.mpo_size, c.mpo_fill, c.mpo_mask_seed)  # (rows, cols)
        x, y = patterns.cell_xy(self.black.shape)
        xy = torch.tensor(np.stack([x, y], -1), dtype=torch.float32)
        trained = torch.from_numpy(patterns.trained(self.black))
        black = torch.from_numpy(self.black.copy())
        self.register_buffer("black_xy", xy[black & trained], persistent=False)   # (n_black, 2)
        self.register_buffer("white_xy", xy[~black & trained], persistent=False)
        self.scale = nn.Parameter(torch.tensor(float(c.mpo_scale)))
        return Subspace(lambda: plane_model(self.make_model), "simplex", 3)      # W rows: origin, right, up

    # -- the plane --------------------------------------------------------------------------------------
    def axes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """u and v: orthogonal, |v| = |u| (Gram–Schmidt of up − origin against u, rescaled)."""
        origin, right, up = self.sub.W
        u = right - origin
        d = up - origin
        v = d - (d @ u) / (u @ u) * u
        return u, v * (u.norm() / v.norm())

    def plane(self, xy: torch.Tensor) -> torch.Tensor:
        """Flat weights (k, P) at plane coordinates xy (k, 2): origin + s·(x·u + y·v)."""
        u, v = self.axes()
        xy = xy.to(self.sub.W.dtype)
        return self.sub.W[0] + self.scale * (xy[:, :1] * u + xy[:, 1:] * v)

    def cell_logits(self, xy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(k, batch, classes): the network at each of k cells on the same inputs, in one vmapped pass."""
        ws = self.plane(xy)  # weights mixed in fp32, outside autocast

        def one(w: torch.Tensor) -> torch.Tensor:
            self.sub.set_flat(w)
            return self.sub.model(x)

        try:
            with self.autocast():
                return torch.func.vmap(one, randomness="different")(ws)
        finally:
            self.sub.set_flat(self.sub.W[0])  # leave no vmapped tensor behind in the model

    # -- training ---------------------------------------------------------------------------------------
    def sample(self, cells: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = min(len(cells), self.cfg.mpo_cells)
        return cells[torch.randperm(len(cells), generator=g, device=g.device)[:n].to(cells.device)]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Step:
        """mean CE over black cells − mean min(CE, cap) over white cells, one backward per chunk of cells.
        Reported: loss = the black cells' mean CE, reg = −the white cells' mean capped CE (their sum is the
        objective), accuracy over the black cells."""
        c = self.cfg
        black, white = self.sample(self.black_xy, g), self.sample(self.white_xy, g)
        xy = torch.cat([black, white])
        is_black = torch.arange(len(xy), device=xy.device) < len(black)
        coef = torch.where(is_black, 1.0 / max(len(black), 1), -1.0 / max(len(white), 1))
        black_ce, white_ce, correct = (torch.zeros((), device=xy.device) for _ in range(3))
        chunk = c.mpo_chunk or len(xy)
        for i in range(0, len(xy), chunk):
            logits = self.cell_logits(xy[i:i + chunk], x).float()
            k = len(logits)
            ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none",
                                 label_smoothing=c.label_smoothing).view(k, -1).mean(1)
            blk = is_black[i:i + chunk]
            ce = torch.where(blk, ce, ce.clamp(max=c.mpo_cap))  # clamped: no gradient past the cap
            (coef[i:i + chunk] * ce).sum().backward()
            ce = ce.detach()
            black_ce += ce[blk].sum()
            white_ce += ce[~blk].sum()
            correct += (logits.detach().argmax(-1) == y)[blk].sum()
        return Step(black_ce / max(len(black), 1), -white_ce / max(len(white), 1), correct, len(black) * len(y))

    # -- evaluation -------------------------------------------------------------------------------------
    def origin(self) -> Point:
        return Point("origin", "center", coords=torch.zeros(2), weights=self.sub.W[0].detach())

    def val_point(self) -> Point:
        return self.origin()

    def points(self, g: torch.Generator) -> list[Point]:
        return [self.origin()]

    @torch.no_grad()
    def cell_metrics(self, xy: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, float]]:
        """Metrics of each cell on (x, y), `mpo_chunk` cells at a time. Examples go in batches of about
        batch_size (evenly split), since BatchNorm uses each batch's own statistics, as in training."""
        self.eval()
        batches = torch.tensor_split(x, max(1, math.ceil(len(x) / self.cfg.batch_size)))
        chunk = self.cfg.mpo_chunk or len(xy)
        out = []
        for i in range(0, len(xy), chunk):
            probs = torch.cat([self.cell_logits(xy[i:i + chunk], b).float().softmax(-1) for b in batches], 1)
            out += [classification_metrics(p, y, self.cfg.ece_bins) for p in probs]
        return out

    def extra_evals(self, epoch: int) -> list[dict[str, Any]]:
        """Heat maps of the plane: every cell of the grown grid on train and test examples, each colour's
        mean over the picture's cells, and the gap black − white."""
        c, d = self.cfg, self.data
        margin, (h, w) = c.mpo_margin, self.black.shape
        x, y = patterns.cell_xy((h, w), margin)
        colour = np.full(x.shape, "", dtype=object)
        colour[margin:margin + h, margin:margin + w] = np.where(self.black, "black", "white")
        x, y, colour = x.ravel(), y.ravel(), colour.ravel()
        xy = torch.tensor(np.stack([x, y], 1), dtype=torch.float32, device=self.sub.W.device)
        n = c.mpo_eval_examples or None
        rows: list[dict[str, Any]] = []
        base = dict(epoch=epoch, alpha=None, members=1, member_of="", corruption="", severity=0)
        for split in ("train", "test"):
            xs, ys = getattr(d, f"{split}_x")[:n], getattr(d, f"{split}_y")[:n]
            if not len(ys):
                continue
            cells = self.cell_metrics(xy, xs, ys)
            for i, mt in enumerate(cells):
                rows.append(dict(base, split=split, point=f"cell_{x[i]}_{y[i]}", kind="cell",
                                 coords=[float(x[i]), float(y[i])], colour=colour[i], **mt))
            means = {col: {k: float(np.mean([mt[k] for mt, cc in zip(cells, colour, strict=True) if cc == col]))
                           for k in METRICS} for col in ("black", "white")}
            for col, mt in means.items():
                rows.append(dict(base, split=split, point=col, kind="colour", coords=None, colour=col, **mt))
            rows.append(dict(base, split=split, point="gap", kind="gap", coords=None, colour="",
                             **{k: means["black"][k] - means["white"][k] for k in METRICS}))
        return rows
