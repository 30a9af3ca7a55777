"""Classification metrics from probabilities (not logits): ensembles average probabilities first."""

from __future__ import annotations

import torch


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error over `bins` equal-width confidence bins, right-closed: (0, 1/B], ...
    Sum over bins of (n_b / N) * |accuracy_b - mean confidence_b|."""
    conf, pred = probs.max(dim=1)
    if not bool(torch.isfinite(conf).all()):  # a diverged network: no bin to put it in
        return float("nan")
    correct = (pred == labels).to(probs.dtype)
    idx = (torch.ceil(conf * bins) - 1).clamp(0, bins - 1).long()
    count = torch.zeros(bins, dtype=probs.dtype, device=probs.device).index_add_(0, idx, torch.ones_like(conf))
    acc = torch.zeros_like(count).index_add_(0, idx, correct)
    cf = torch.zeros_like(count).index_add_(0, idx, conf)
    return float((acc - cf).abs().sum() / len(labels))


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL (mean -log p_y, clamped at 1e-12), Brier (mean sum_c (p_c - 1[y=c])^2) and ECE.
    Non-finite probabilities (a diverged network) give NaN NLL, Brier and ECE, never an error."""
    probs = probs.double()
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return {
        "accuracy": float((probs.argmax(1) == labels).double().mean()),
        "nll": float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()),
        "brier": float(((probs - onehot) ** 2).sum(1).mean()),
        "ece": ece(probs, labels, bins),
    }
