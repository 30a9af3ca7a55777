"""`connect`: a low-loss path or simplex through fixed, already trained solutions (mode connectivity).

The endpoints are the final weights of finished standard-training trials of the same sweep
(`connect_endpoints`, resolved by trainers/references.py; the sink hands their checkpoints in). They stay
fixed; only the extra vertices are trained, each starting at the endpoints' centroid (where the connecting
curve is the straight line):

- shape `curve` (Garipov et al. 2018): the quadratic Bézier curve w(t) = (1-t)² w₀ + t² w₁ + 2t(1-t) θ
  between two endpoints, θ learned; each step draws t ~ U(0, 1).
- shape `simplex` (Fort & Jastrzębski 2019, "Large scale structure of neural network loss landscapes"):
  n endpoints and k = `connect_points` learned vertices θ₁..θ_k; the low-loss set is the union of the n
  simplices spanned by one endpoint and all of θ₁..θ_k; each step draws one of the simplices and a uniform
  point in it. With n = 2, k = 1 it is the polygonal chain w₀ - θ - w₁.

Evaluation, every point with BatchNorm statistics recomputed for it: the endpoints (ensembled as
`ensemble_endpoints`), the learned vertices (`control_<j>`), the centre (`center`: t = 0.5 on the curve, the
learned vertices' centroid for a simplex), the α grid along the learned path between the first two endpoints
(`alpha_<a>`: the curve, or endpoint_0 → centre → endpoint_1 for a simplex), the straight line between the same
endpoints (`line_<a>`, kind `line`: the barrier the path is compared with), and `ensemble_samples` random
points of the learned set.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from trainers.methods.base import Method, Point, Step
from trainers.subspace import Subspace


class Connect(Method):
    main = "center"
    ensemble = "ensemble_endpoints"

    def build(self) -> Subspace:
        c = self.cfg
        if self.endpoint_states is None:
            raise ValueError("method connect needs the checkpoints of its endpoint trials: run it in a sweep "
                             "(basin run) or with basin train --out <the folder of the endpoint trials>")
        states = self.endpoint_states(c)
        sub = Subspace(self.make_model, "simplex", len(states))  # W (n, P): the endpoints, fixed
        ends = [s["model"]["sub.W"][0] for s in states]
        for i, w in enumerate(ends):
            if w.numel() != sub.n_params:
                raise ValueError(f"connect_endpoints: endpoint {i} has {w.numel()} weights, this model has "
                                 f"{sub.n_params}")
        with torch.no_grad():
            sub.W.copy_(torch.stack(ends))
        sub.W.requires_grad_(False)
        self.learned = nn.Parameter(sub.W.mean(0, keepdim=True).repeat(c.connect_points, 1).clone())
        return sub

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """Only the extra vertices are trained."""
        return iter([self.learned])

    # -- points of the learned set --------------------------------------------------------------------------
    def mix(self, fixed: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        """Weights Σ fixed_i w_i + Σ learned_j θ_j (coefficients over the endpoints and the learned vertices)."""
        return fixed.to(self.sub.W.dtype) @ self.sub.W + learned.to(self.learned.dtype) @ self.learned

    def onehot(self, i: int) -> torch.Tensor:
        return torch.eye(self.sub.n_endpoints, device=self.sub.W.device)[i]

    def along(self, t: float) -> torch.Tensor:
        """The learned path between endpoints 0 and 1 at t in [0, 1]."""
        e0, e1 = self.onehot(0), self.onehot(1)
        k = len(self.learned)
        if self.cfg.shape == "curve":
            return self.mix((1 - t) ** 2 * e0 + t**2 * e1, torch.full((1,), 2 * t * (1 - t), device=e0.device))
        if t <= 0.5:  # endpoint_0 -> centroid of the learned vertices -> endpoint_1
            return self.mix((1 - 2 * t) * e0, torch.full((k,), 2 * t / k, device=e0.device))
        return self.mix((2 * t - 1) * e1, torch.full((k,), (2 - 2 * t) / k, device=e0.device))

    def straight(self, t: float) -> torch.Tensor:
        """The straight line between endpoints 0 and 1 at t."""
        return self.mix((1 - t) * self.onehot(0) + t * self.onehot(1),
                        torch.zeros(len(self.learned), device=self.sub.W.device))

    def draw(self, g: torch.Generator) -> torch.Tensor:
        """A random point of the learned set (differentiable in the learned vertices)."""
        dev = g.device
        if self.cfg.shape == "curve":
            return self.along(float(torch.rand((), generator=g, device=dev)))
        i = int(torch.randint(self.sub.n_endpoints, (), generator=g, device=dev))
        e = torch.empty(1 + len(self.learned), device=dev).exponential_(1.0, generator=g)  # uniform on the simplex
        e = (e / e.sum()).to(self.sub.W.device)
        return self.mix(e[0] * self.onehot(i), e[1:])

    # -- training ---------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Step:
        return self.step_at(self.draw(g), x, y)

    # -- evaluation -------------------------------------------------------------------------------------------
    def val_point(self) -> Point:
        with torch.no_grad():  # t = 0.5 on the curve; the learned vertices' centroid on a simplex's path
            return Point("center", "center", alpha=0.5, weights=self.along(0.5))

    @torch.no_grad()
    def points(self, g: torch.Generator) -> list[Point]:
        c = self.cfg
        grid = [i / (c.alpha_grid - 1) for i in range(c.alpha_grid)]
        ends = [Point(f"endpoint_{i}", "endpoint", alpha=float(i) if i < 2 else None, member_of="endpoints",
                      weights=self.sub.W[i]) for i in range(self.sub.n_endpoints)]
        return [*ends, *(Point(f"control_{j}", "control", weights=w) for j, w in enumerate(self.learned)),
                self.val_point(), *(Point(f"alpha_{a:.2f}", "alpha", alpha=a, weights=self.along(a)) for a in grid),
                *(Point(f"line_{a:.2f}", "line", alpha=a, weights=self.straight(a)) for a in grid),
                *(Point(f"sample_{i}", "sample", weights=self.draw(g), member_of="samples")
                  for i in range(c.ensemble_samples))]

    def weight_points(self) -> list[Point]:
        return [self.val_point()]
