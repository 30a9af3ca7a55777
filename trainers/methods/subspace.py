"""`subspace` (Wortsman et al. 2021): a point, line, quadratic Bézier curve or simplex of networks, trained
by drawing one random point per batch (per layer when layer-wise) and stepping every endpoint with its
gradient, plus β·cos² between two random endpoints. A `point` is standard training."""

from __future__ import annotations

import torch

from trainers.methods.base import Method, Point, Step
from trainers.subspace import Subspace


class SubspaceMethod(Method):
    def build(self) -> Subspace:
        c = self.cfg
        return Subspace(self.make_model, c.shape, c.endpoints, c.layerwise)

    @property
    def main(self) -> str:
        return "point" if self.cfg.shape == "point" else "center"

    @property
    def ensemble(self) -> str:
        return "" if self.cfg.shape == "point" else "ensemble_endpoints"

    @property
    def regularise(self) -> bool:
        return self.cfg.beta > 0 and self.sub.n_endpoints > 1

    def train_step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Step:
        loss, logits = self.loss_at(self.sub.draw(g), x, y)
        reg = self.cfg.beta * self.sub.cos2(g) if self.regularise else loss.new_zeros(())
        (loss + reg).backward()
        return Step(loss.detach(), reg.detach(), (logits.argmax(1) == y).sum(), len(y))

    # -- evaluation -------------------------------------------------------------------------------------
    def center(self) -> Point:
        line = self.cfg.shape in ("line", "curve")
        return Point("point" if self.cfg.shape == "point" else "center", "center", self.sub.center(),
                     alpha=0.5 if line else None)

    def val_point(self) -> Point:
        return self.center()

    def endpoints(self) -> list[Point]:
        line = self.cfg.shape in ("line", "curve")
        return [Point(f"endpoint_{i}", "endpoint", self.sub.endpoint(i), alpha=float(i) if line else None,
                      member_of="endpoints") for i in range(self.sub.n_endpoints)]

    def points(self, g: torch.Generator) -> list[Point]:
        """Endpoints, centre, the α grid of a line or curve, the barycentric grid of an m = 3 simplex, and k
        random points of the subspace (ensembled as `ensemble_samples`)."""
        cfg, sub = self.cfg, self.sub
        if cfg.shape == "point":
            return [self.center()]
        pts = [*self.endpoints(), self.center()]
        if cfg.shape in ("line", "curve"):
            grid = [i / (cfg.alpha_grid - 1) for i in range(cfg.alpha_grid)]
            pts += [Point(f"alpha_{a:.2f}", "alpha", sub.at_alpha(a), alpha=a) for a in grid]
        if cfg.shape == "simplex" and cfg.endpoints == 3:
            k = cfg.simplex_grid
            for i in range(k + 1):
                for j in range(k + 1 - i):
                    bary = torch.tensor([i, j, k - i - j], dtype=torch.float32, device=sub.W.device) / k
                    pts.append(Point(f"simplex_{i}_{j}_{k - i - j}", "simplex", bary))
        pts += [Point(f"sample_{i}", "sample", sub.draw(g), member_of="samples") for i in range(cfg.ensemble_samples)]
        return pts

    def weight_points(self) -> list[Point]:
        return [self.center()] if self.cfg.shape == "point" else [*self.endpoints(), self.center()]
