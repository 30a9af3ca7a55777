"""`mimo` (Havasi et al. 2021): M subnetworks in one network. The model is built for M inputs stacked on
channels and M × classes outputs (M heads), so any model whose first layer reads its input channels and whose
last layer is linear can be wrapped (trainers.models.mimo_problem checks it before a trial starts).

Training batches follow the reference implementation (uncertainty-baselines, CIFAR-10): the batch is
repeated `mimo_batch_repeats` times, and each head gets its own shuffle of it, except that a fraction
`mimo_repeat_prob` of the positions keeps one shared order (all heads see the same example there). With
probability 0 (the paper's CIFAR default) the heads see independent examples, which is what makes them
independent subnetworks; the loss is the sum of the heads' cross-entropies. At test time the same input goes
to every head: one forward pass gives M predictions (`member_<i>`), averaged as `ensemble_members`, the
trial's main point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.methods.base import Method, Point, Step
from trainers.subspace import Subspace


def head_indices(batch: int, heads: int, repeat_prob: float, repeats: int, g: torch.Generator) -> torch.Tensor:
    """(heads, batch * repeats) indices into a batch: which example each head sees at each position."""
    main = torch.arange(batch, device=g.device).repeat(repeats)
    main = main[torch.randperm(len(main), generator=g, device=g.device)]
    shuffled = int(len(main) * (1.0 - repeat_prob))  # positions where every head draws its own example
    rows = [torch.cat([main[:shuffled][torch.randperm(shuffled, generator=g, device=g.device)], main[shuffled:]])
            for _ in range(heads)]
    return torch.stack(rows)


class MIMO(Method):
    main = "ensemble_members"
    ensemble = "ensemble_members"

    def build(self) -> Subspace:
        c, h, w = self.data.in_shape
        m = self.cfg.mimo_heads
        return Subspace(lambda: self.make_model((m * c, h, w), m * self.data.classes), "point")

    def stack(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Inputs (N, C, H, W) and head indices (M, R) -> the network's input (R, M*C, H, W)."""
        return x[idx].transpose(0, 1).flatten(1, 2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, classes): every head's logits for the same inputs."""
        idx = torch.arange(len(x), device=x.device).expand(self.cfg.mimo_heads, -1)
        return self.sub.model(self.stack(x, idx)).view(len(x), self.cfg.mimo_heads, -1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Step:
        c, m = self.cfg, self.cfg.mimo_heads
        idx = head_indices(len(x), m, c.mimo_repeat_prob, c.mimo_batch_repeats, g)
        self.sub.set_point(self.sub.center())
        with self.autocast():
            logits = self.sub.model(self.stack(x, idx))
        logits = logits.float().view(idx.shape[1], m, -1)
        targets = y[idx].T                                            # (R, M)
        per_head = F.cross_entropy(logits.permute(0, 2, 1), targets, label_smoothing=c.label_smoothing,
                                   reduction="none").mean(0)          # (M,)
        per_head.sum().backward()
        correct = (logits.argmax(-1) == targets).sum() / m
        return Step(per_head.detach().mean(), per_head.new_zeros(()), correct, idx.shape[1])

    def val_point(self) -> Point:
        return Point("ensemble_members", "ensemble", self.sub.center())

    def points(self, g: torch.Generator) -> list[Point]:
        return [Point(f"member_{i}", "member", self.sub.center(), head=i, member_of="members")
                for i in range(self.cfg.mimo_heads)]

    @torch.no_grad()
    def predict(self, point: Point, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().predict(point, xs)  # (N, M, classes) per split: one forward for every head
        return {s: p[:, point.head] if point.head is not None else p.mean(1) for s, p in out.items()}
