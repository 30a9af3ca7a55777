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
    rows = batch * repeats
    main = torch.randperm(rows, generator=g, device=g.device) % batch  # every example `repeats` times
    shuffled = int(rows * (1.0 - repeat_prob))  # positions where every head draws its own example
    perms = torch.rand(heads, shuffled, generator=g, device=g.device).argsort(1)  # one permutation per head
    own = main[:shuffled][perms]
    return own if shuffled == rows else torch.cat([own, main[shuffled:].expand(heads, -1)], 1)


class MIMO(Method):
    main = "ensemble_members"
    ensemble = "ensemble_members"

    def build(self) -> Subspace:
        c, h, w = self.data.in_shape
        m = self.cfg.mimo_heads
        return Subspace(lambda: self.make_model((m * c, h, w), m * self.data.classes), "point")

    def stack(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Inputs (N, C, H, W) and head indices (M, R) -> the network's input (R, M*C, H, W)."""
        return x[idx.T].flatten(1, 2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, classes): every head's logits for the same inputs."""
        m = self.cfg.mimo_heads
        return self.net(self.input(x.repeat(1, m, *([1] * (x.dim() - 2))))).view(len(x), m, -1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Step:
        c, m = self.cfg, self.cfg.mimo_heads
        idx = head_indices(len(x), m, c.mimo_repeat_prob, c.mimo_batch_repeats, g)
        self.sub.set_point(self.sub.center())
        with self.autocast():
            logits = self.net(self.input(self.stack(x, idx)))
        logits = logits.float().view(idx.shape[1] * m, -1)     # (R*M, classes): row r*M + h is head h
        targets = y[idx.T].reshape(-1)
        loss = F.cross_entropy(logits, targets, label_smoothing=c.label_smoothing)  # mean over heads too
        (loss * m).backward()  # the sum of the heads' losses
        return Step(loss.detach(), loss.new_zeros(()), (logits.argmax(1) == targets).sum() / m, idx.shape[1])

    def val_point(self) -> Point:
        return Point("ensemble_members", "ensemble", self.sub.center())

    def points(self, g: torch.Generator) -> list[Point]:
        return [Point(f"member_{i}", "member", self.sub.center(), head=i, member_of="members")
                for i in range(self.cfg.mimo_heads)]

    @torch.no_grad()
    def predict(self, point: Point, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().predict(point, xs)  # (N, M, classes) per split: one forward for every head
        return {s: p[:, point.head] if point.head is not None else p.mean(1) for s, p in out.items()}
