"""Samples of weights around one trained solution (Fort, Hu & Lakshminarayanan, "Deep Ensembles: A Loss
Landscape Perspective", Sec. 4): the functions they give are compared with independently trained seeds for
accuracy and diversity. Each sampler returns flat weight vectors; the evaluation sets each one, recomputes
BatchNorm statistics for it and scores it like any other point.

- random:   w + r·‖w‖·d for a uniformly random direction d (r = sampler_radius);
- dropout:  w with a random fraction p of its weights zeroed and the rest scaled by 1 / (1 - p) (weight-space
            dropout, so each sample is one fixed network);
- gaussian: a diagonal Gaussian fitted to the solution's weights at the last `sampler_checkpoints` epochs;
- pca:      a rank-r Gaussian over the same checkpoints: their mean plus the top r principal directions of
            the centred checkpoints, each with its own standard deviation (r = sampler_rank).
"""

from __future__ import annotations

import math

import torch

SAMPLED_BY_FIT = ("gaussian", "pca")


class Trajectory:
    """The solution's flat weights at the end of the last `size` epochs (a ring buffer), for the fitted
    samplers. Its state goes into the trial's checkpoint."""

    def __init__(self, size: int, n_params: int, device: torch.device):
        self.weights = torch.zeros(size, n_params, device=device)
        self.count = 0

    def add(self, w: torch.Tensor) -> None:
        self.weights[self.count % len(self.weights)] = w.detach()
        self.count += 1

    def kept(self) -> torch.Tensor:
        return self.weights[: min(self.count, len(self.weights))]

    def state(self) -> dict:
        return {"weights": self.weights.clone(), "count": self.count}

    def load(self, state: dict) -> None:
        self.weights.copy_(state["weights"])
        self.count = int(state["count"])


def random_direction(w: torch.Tensor, radius: float, g: torch.Generator) -> torch.Tensor:
    d = torch.randn(w.shape, generator=g, device=g.device).to(w.device)
    return w + d * (radius * w.norm() / d.norm())


def dropout(w: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    keep = (torch.rand(w.shape, generator=g, device=g.device) >= p).to(w.device)
    return torch.where(keep, w / (1 - p), torch.zeros_like(w))


def gaussian(checkpoints: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    mean, std = checkpoints.mean(0), checkpoints.std(0)
    return mean + std * torch.randn(mean.shape, generator=g, device=g.device).to(mean.device)


def pca_basis(checkpoints: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (P,), the top `rank` principal directions (r, P) of the centred checkpoints and the standard
    deviation along each (r,)."""
    mean = checkpoints.mean(0)
    centred = checkpoints - mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # (K, P): K is small, so this is cheap
    r = min(rank, len(s))
    return mean, vh[:r], s[:r] / math.sqrt(max(1, len(checkpoints) - 1))


def pca(checkpoints: torch.Tensor, rank: int, g: torch.Generator) -> torch.Tensor:
    mean, basis, std = pca_basis(checkpoints, rank)
    z = torch.randn(len(std), generator=g, device=g.device).to(mean.device)
    return mean + (z * std) @ basis


def draw(kind: str, w: torch.Tensor, trajectory: Trajectory | None, cfg, g: torch.Generator) -> torch.Tensor:
    """One sample of sampler `kind` around the solution w (flat weights)."""
    if kind == "random":
        return random_direction(w, cfg.sampler_radius, g)
    if kind == "dropout":
        return dropout(w, cfg.sampler_dropout, g)
    if trajectory is None or trajectory.count < 2:
        raise ValueError(f"sampler {kind} needs the weights of at least 2 epochs")
    if kind == "gaussian":
        return gaussian(trajectory.kept(), g)
    return pca(trajectory.kept(), cfg.sampler_rank, g)
