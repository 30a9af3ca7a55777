"""`hyperplane` (Fort & Scherlis, "The Goldilocks zone"; Li et al., "Measuring the intrinsic dimension"):
training confined to a random d-dimensional affine hyperplane of weight space. Only d coordinates θ are
trained; the network's weights are w = w₀ + P θ, with w₀ the model's own initialisation scaled by
`hyperplane_radius` (so ‖w₀‖ = radius × ‖init‖) and P a fixed random D × d matrix with N(0, 1/D) entries
(columns of unit norm in expectation, nearly orthogonal for D ≫ d). θ starts at 0.

P is a function of the trial's seed: rows come in chunks, each from its own CPU generator, so P is the same
on every device and is regenerated rather than stored (it is not in the checkpoint). Small projections are
kept on the device once built; larger ones (over DENSE_LIMIT entries) are regenerated chunk by chunk in
every forward and backward pass, so a big model never holds P whole.

Points: `point` (w₀ + Pθ, the trial's main point) and `origin` (w₀, where training started: the Goldilocks
measures of the initialisation are probed there).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from trainers.methods.base import Method, Point, Step
from trainers.subspace import Subspace

CHUNK = 1 << 14             # rows of P generated at once
DENSE_LIMIT = 1 << 25       # P with at most this many entries (128 MB in fp32) is kept on the device once built
SEED = 7_919                # P's generators: seed * SEED + chunk index, a function of the trial's seed only


class Projection:
    """The D × d matrix P, generated chunk by chunk from a seed."""

    def __init__(self, n_params: int, dim: int, seed: int):
        self.n, self.d, self.seed = n_params, dim, seed
        self._dense: torch.Tensor | None = None

    def chunk(self, i: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows [i * CHUNK, (i + 1) * CHUNK) of P."""
        rows = min(CHUNK, self.n - i * CHUNK)
        g = torch.Generator().manual_seed(self.seed * SEED + i)
        return (torch.randn(rows, self.d, generator=g) / math.sqrt(self.n)).to(device)

    def dense(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """P whole."""
        return torch.cat([self.chunk(i, device) for i in range(math.ceil(self.n / CHUNK))])

    def chunks(self, device: torch.device) -> Iterator[tuple[slice, torch.Tensor]]:
        if self.n * self.d <= DENSE_LIMIT:
            if self._dense is None or self._dense.device != device:
                self._dense = self.dense(device)
            yield slice(0, self.n), self._dense
            return
        for i in range(math.ceil(self.n / CHUNK)):
            yield slice(i * CHUNK, min((i + 1) * CHUNK, self.n)), self.chunk(i, device)

    def matvec(self, theta: torch.Tensor) -> torch.Tensor:
        out = torch.empty(self.n, device=theta.device, dtype=theta.dtype)
        for rows, p in self.chunks(theta.device):
            out[rows] = p @ theta
        return out

    def rmatvec(self, w: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.d, device=w.device, dtype=w.dtype)
        for rows, p in self.chunks(w.device):
            out += p.T @ w[rows]
        return out


class _Project(torch.autograd.Function):
    """P θ, with the gradient Pᵀ g: both regenerate P chunk by chunk instead of keeping it for backward."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, proj: Projection) -> torch.Tensor:
        ctx.proj = proj
        return proj.matvec(theta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.proj.rmatvec(grad), None


class Hyperplane(Method):
    main = "point"

    def build(self) -> Subspace:
        c = self.cfg
        sub = Subspace(self.make_model, "point")
        with torch.no_grad():
            sub.W.mul_(c.hyperplane_radius)  # W holds w0, fixed
        sub.W.requires_grad_(False)
        self.theta = nn.Parameter(torch.zeros(c.hyperplane_dim))
        self.proj = Projection(sub.n_params, c.hyperplane_dim, c.seed)
        return sub

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """Only θ is trained."""
        return iter([self.theta])

    @property
    def origin(self) -> torch.Tensor:
        return self.sub.W[0]

    def weights_now(self) -> torch.Tensor:
        """w₀ + P θ (differentiable in θ)."""
        return self.origin + _Project.apply(self.theta, self.proj)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Step:
        return self.step_at(self.weights_now(), x, y)

    def val_point(self) -> Point:
        with torch.no_grad():
            return Point("point", "center", weights=self.weights_now())

    def points(self, g: torch.Generator) -> list[Point]:
        return [self.val_point(), Point("origin", "origin", weights=self.origin.detach())]
