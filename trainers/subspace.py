"""Subspaces of any nn.Module: shapes are data, not layer classes.

All n weight vectors (endpoints, plus a curve's control point) live in one (n, P) parameter `W`. A point
in the subspace is a coefficient vector c over them (per layer when layerwise), and the model runs with
weights c @ W: the model's own parameters are replaced by views of that flat vector, so one forward and
one backward at the drawn point send gradients to every endpoint. Conv/linear weights come first in the
flat layout, so the cos^2 regulariser works on a contiguous slice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Shape:
    n_endpoints: Callable[[int], int]                 # endpoints given the config's m
    extra: int                                        # stacked tensors beyond the endpoints (curve: 1)
    coeffs: Callable[[torch.Tensor, int], torch.Tensor]  # coordinates (..., d) -> coefficients (..., n)
    draw: Callable[[int, int, torch.Generator], torch.Tensor]  # (count, m, gen) -> coordinates (count, d)


def _uniform_alpha(count: int, m: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(count, 1, generator=g, device=g.device)


def _uniform_simplex(count: int, m: int, g: torch.Generator) -> torch.Tensor:
    e = torch.empty(count, m, device=g.device).exponential_(1.0, generator=g)  # Exp(1) normalised = Dirichlet(1)
    return e / e.sum(1, keepdim=True)


def _line(t: torch.Tensor, m: int) -> torch.Tensor:
    return torch.cat([1 - t, t], -1)


def _bezier(t: torch.Tensor, m: int) -> torch.Tensor:
    # quadratic Bezier over (w0, w1, control): (1-a)^2 w0 + a^2 w1 + 2a(1-a) theta
    return torch.cat([(1 - t) ** 2, t**2, 2 * t * (1 - t)], -1)


SHAPES: dict[str, Shape] = {
    "point": Shape(lambda m: 1, 0, lambda t, m: torch.ones(*t.shape[:-1], 1, device=t.device),
                   lambda c, m, g: torch.zeros(c, 0, device=g.device)),
    "line": Shape(lambda m: 2, 0, _line, _uniform_alpha),
    "curve": Shape(lambda m: 2, 1, _bezier, _uniform_alpha),
    "simplex": Shape(lambda m: m, 0, lambda t, m: t, _uniform_simplex),
}


class Subspace(nn.Module):
    def __init__(self, make_model: Callable[[], nn.Module], shape: str, m: int = 2, layerwise: bool = False):
        super().__init__()
        self.shape, self.spec, self.m, self.layerwise = shape, SHAPES[shape], m, layerwise
        self.channels_last = False  # set_flat gives conv weights in NHWC (the method sets it from the config)
        self.n_endpoints = self.spec.n_endpoints(m)
        n = self.n_endpoints + self.spec.extra
        models = [make_model() for _ in range(n)]  # independent inits, from the model's own initialiser
        self.model = models[0]                      # keeps the structure and the buffers (BN statistics)

        named = list(self.model.named_parameters())
        named.sort(key=lambda kv: kv[1].dim() < 2)  # conv/linear weights first (stable sort)
        self.n_reg = sum(p.numel() for _, p in named if p.dim() >= 2)
        self._slots: list[tuple[nn.Module, str, int, int, torch.Size]] = []
        layers: dict[str, int] = {}
        group_sizes: list[tuple[int, int]] = []
        offset = 0
        for name, p in named:
            owner, _, attr = name.rpartition(".")
            module = self.model.get_submodule(owner)
            self._slots.append((module, attr, offset, p.numel(), p.shape))
            group_sizes.append((layers.setdefault(owner, len(layers)), p.numel()))
            offset += p.numel()
        self.n_params, self.n_layers = offset, len(layers)
        self._numels = [numel for _, _, _, numel, _ in self._slots]
        flat = [torch.cat([dict(mod.named_parameters())[nm].detach().flatten() for nm, _ in named]) for mod in models]
        self.W = nn.Parameter(torch.stack(flat))  # (n, P)
        group = torch.cat([torch.full((k,), g, dtype=torch.long) for g, k in group_sizes])
        self.register_buffer("group", group, persistent=False)
        for module, attr, *_ in self._slots:  # the model's parameters become views of c @ W
            del module._parameters[attr]
        self.set_point(self.center())

    # -- points -----------------------------------------------------------------------------------------
    def coeffs(self, coords: torch.Tensor) -> torch.Tensor:
        return self.spec.coeffs(coords, self.m)

    def draw(self, g: torch.Generator, layerwise: bool | None = None) -> torch.Tensor:
        """Coefficients of a random point: (n,), or (layers, n) when layerwise."""
        layerwise = self.layerwise if layerwise is None else layerwise
        c = self.coeffs(self.spec.draw(self.n_layers if layerwise else 1, self.m, g))
        return c if layerwise else c[0]

    def endpoint(self, i: int) -> torch.Tensor:
        c = torch.zeros(self.W.shape[0], device=self.W.device)
        c[i] = 1.0
        return c

    def center(self) -> torch.Tensor:
        if self.shape == "simplex":
            return torch.full((self.m,), 1.0 / self.m, device=self.W.device)
        return self.at_alpha(0.5)

    def at_alpha(self, alpha: float) -> torch.Tensor:
        t = torch.tensor([alpha], device=self.W.device)
        return self.coeffs(t if self.shape != "point" else t[:0])

    # -- weights ----------------------------------------------------------------------------------------
    def weights(self, c: torch.Tensor) -> torch.Tensor:
        """Flat weights at coefficients c: (n,) for one point, (layers, n) for a layer-wise point."""
        if self.W.shape[0] == 1:
            return self.W[0]
        if c.dim() == 1:
            return c.to(self.W.dtype) @ self.W
        return (c.to(self.W.dtype)[self.group].T * self.W).sum(0)

    def set_point(self, c: torch.Tensor) -> None:
        """Point the model's parameters at the weights of c (they stay differentiable w.r.t. W)."""
        self.set_flat(self.weights(c))

    def set_flat(self, w: torch.Tensor) -> None:
        """Point the model's parameters at views of a flat weight vector (any point in weight space: on the
        subspace, an average of snapshots, a sample around a solution). One split, not a slice per tensor:
        its backward is a single concatenation."""
        for (module, attr, _, _, shape), piece in zip(self._slots, w.split(self._numels), strict=True):
            v = piece.view(shape)
            if self.channels_last and v.dim() == 4:  # a differentiable copy: conv weights in NHWC too
                v = v.contiguous(memory_format=torch.channels_last)
            object.__setattr__(module, attr, v)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if c is not None:
            self.set_point(c)
        return self.model(x)

    def cos2(self, g: torch.Generator) -> torch.Tensor:
        """cos^2 between the conv/linear weights of two distinct random endpoints (0 for a point)."""
        if self.n_endpoints < 2:
            return self.W.new_zeros(())
        pair = torch.randperm(self.n_endpoints, generator=g, device=g.device)[:2]  # stays on device: no sync
        a, b = self.W[:, : self.n_reg].index_select(0, pair)  # backward: index_add, not a sorting index_put
        return (a @ b) ** 2 / ((a @ a) * (b @ b))
