"""`independent`: every endpoint of a line or simplex trained as its own standard model (no regulariser, no
shared draws), in one trial. The endpoints are a deep ensemble, and the shape's evaluation (α grid, centre)
measures the barrier between separately trained networks. The trial is judged, validated and early-stopped
by its endpoint ensemble: the centre of two independent networks is the barrier, not a model, and random
points between them are no samples of anything."""

from __future__ import annotations

import torch

from trainers.methods.base import Point, Step
from trainers.methods.subspace import SubspaceMethod


class Independent(SubspaceMethod):
    main = "ensemble_endpoints"
    ensemble = "ensemble_endpoints"

    def train_step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Step:
        n = self.sub.n_endpoints
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device)
        for i in range(n):  # one backward per endpoint: only one endpoint's graph is alive at a time
            loss, logits = self.loss_at(self.sub.endpoint(i), x, y)
            loss.backward()
            loss_sum += loss.detach() / n
            correct += (logits.argmax(1) == y).sum() / n
        return Step(loss_sum, loss_sum.new_zeros(()), correct, len(y))

    def val_point(self) -> Point:
        return Point("ensemble_endpoints", "ensemble")

    def solution(self) -> Point:
        return self.endpoints()[0]

    def points(self, g: torch.Generator) -> list[Point]:
        """The subspace's points (endpoints, the barrier's centre and α grid) without random samples."""
        return [p for p in super().points(g) if p.kind != "sample"]

    def weight_points(self) -> list[Point]:
        return self.endpoints()

    @torch.no_grad()
    def predict(self, point: Point, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if point.kind != "ensemble":
            return super().predict(point, xs)
        each = [super(Independent, self).predict(p, xs) for p in self.endpoints()]  # probabilities averaged
        return {s: torch.stack([e[s] for e in each]).mean(0) for s in xs}
