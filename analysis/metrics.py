"""Classification metrics from probabilities, in numpy, equal to the trainer's (trainers/metrics.py).

Every function takes probabilities of shape (..., N, C) and labels broadcastable to (..., N), so a whole
batch of ensembles is scored in one call. Definitions:

- accuracy: mean of argmax == label (first maximum on ties, as torch and numpy both do);
- NLL: mean of -log(max(p_y, 1e-12));
- Brier: mean over examples of sum_c (p_c - 1[y=c])^2;
- ECE: `bins` equal-width confidence bins, right-closed ((0, 1/B], (1/B, 2/B], ...), bin index
  ceil(conf * B) - 1 computed in float64 exactly as the trainer does; sum over bins of
  (n_b / N) * |accuracy_b - mean confidence_b|.

By default probabilities are cast to float64 first, as the trainer does, so values match it to rounding.
`dtype=None` keeps the input dtype for the elementwise work (the ensemble curves pass float32 to halve
memory traffic); reductions are always float64.
"""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "nll", "brier", "ece")
NLL_FLOOR = 1e-12


def _prep(probs: np.ndarray, labels: np.ndarray, dtype: type | None) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs)
    if dtype is not None:
        probs = probs.astype(dtype, copy=False)
    labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), probs.shape[:-1])
    return probs, labels


def _p_true(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.take_along_axis(probs, labels[..., None], axis=-1)[..., 0]


def accuracy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    probs, labels = _prep(probs, labels, None)
    return (probs.argmax(-1) == labels).mean(-1, dtype=np.float64)


def nll(probs: np.ndarray, labels: np.ndarray, dtype: type | None = np.float64) -> np.ndarray:
    probs, labels = _prep(probs, labels, dtype)
    p = _p_true(probs, labels).astype(np.float64)
    return -np.log(np.maximum(p, NLL_FLOOR)).mean(-1)


def brier(probs: np.ndarray, labels: np.ndarray, dtype: type | None = np.float64) -> np.ndarray:
    probs, labels = _prep(probs, labels, dtype)
    # sum_c (p_c - 1[y=c])^2 = sum_c p_c^2 - 2 p_y + 1, without building the one-hot array
    sq = np.einsum("...c,...c->...", probs, probs).astype(np.float64)
    return (sq - 2 * _p_true(probs, labels).astype(np.float64) + 1).mean(-1)


def bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    """Right-closed equal-width bin of each confidence: (0, 1/B] -> 0, ..., (1 - 1/B, 1] -> B - 1."""
    return np.clip(np.ceil(np.asarray(conf, dtype=np.float64) * bins) - 1, 0, bins - 1).astype(np.int64)


def bin_sums(conf: np.ndarray, correct: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per-bin (count, correct count, confidence sum), each (..., bins), of confidences and correctness
    (..., N); bins as `bin_index`. ECE = sum |correct - confidence sum| / N."""
    lead = conf.shape[:-1]
    n_batch = int(np.prod(lead, dtype=np.int64))
    idx = bin_index(conf, bins).reshape(n_batch, -1)
    flat = (idx + bins * np.arange(n_batch)[:, None]).ravel()
    size = n_batch * bins
    count = np.bincount(flat, minlength=size)
    hits = np.bincount(flat, weights=correct.reshape(-1).astype(np.float64), minlength=size)
    confs = np.bincount(flat, weights=conf.reshape(-1).astype(np.float64), minlength=size)
    return tuple(a.reshape(*lead, bins) for a in (count, hits, confs))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15, dtype: type | None = np.float64) -> np.ndarray:
    probs, labels = _prep(probs, labels, dtype)
    return scores(probs, labels, bins, dtype=None)["ece"]


def scores(probs: np.ndarray, labels: np.ndarray, bins: int = 15,
           dtype: type | None = np.float64) -> dict[str, np.ndarray]:
    """All four metrics at once (one pass for argmax/max), each of shape probs.shape[:-2]."""
    probs, labels = _prep(probs, labels, dtype)
    pred = probs.argmax(-1)
    conf = np.take_along_axis(probs, pred[..., None], axis=-1)[..., 0].astype(np.float64)
    correct = pred == labels
    p_y = _p_true(probs, labels).astype(np.float64)
    sq = np.einsum("...c,...c->...", probs, probs).astype(np.float64)
    n = probs.shape[-2]
    count, hits, confs = bin_sums(conf, correct, bins)
    return {
        "accuracy": correct.mean(-1, dtype=np.float64),
        "nll": -np.log(np.maximum(p_y, NLL_FLOOR)).mean(-1),
        "brier": (sq - 2 * p_y + 1).mean(-1),
        "ece": np.abs(hits - confs).sum(-1) / n,
    }


def scores_class_major(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """`scores` for probabilities laid out (B, C, N) (classes before examples), as the ensemble curves
    build them: every reduction over the few classes becomes an elementwise pass over long contiguous
    rows of examples, several times faster than reducing along a short last axis. Same values."""
    b, c, n = probs.shape
    labels = np.asarray(labels, dtype=np.int64)
    conf = probs.max(1)
    # p_y gathered from the same array (so p_y == conf is exact) through flat indices
    p_y = np.take(probs.reshape(b, c * n), labels * n + np.arange(n), axis=1)
    correct = p_y == conf
    # ties: argmax takes the first maximum, so an earlier class equal to conf wins. Rare: find them, then
    # settle only those few examples.
    n_max = np.count_nonzero(probs == conf[:, None, :], axis=1)
    tb, tn = np.nonzero(n_max > 1)
    if len(tb):
        first = np.argmax(probs[tb, :, tn] == conf[tb, tn][:, None], axis=1)
        correct[tb, tn] = first == labels[tn]
    sq = np.einsum("bcn,bcn->bn", probs, probs)
    conf64, p_y64 = conf.astype(np.float64), p_y.astype(np.float64)
    idx = bin_index(conf64, bins) + bins * np.arange(b)[:, None]
    gap = np.bincount(idx.ravel(), weights=(correct - conf64).ravel(), minlength=b * bins).reshape(b, bins)
    return {
        "accuracy": correct.mean(-1, dtype=np.float64),
        "nll": -np.log(np.maximum(p_y64, NLL_FLOOR)).mean(-1),
        "brier": (sq.astype(np.float64) - 2 * p_y64 + 1).mean(-1),
        "ece": np.abs(gap).sum(-1) / n,
    }


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin counts, accuracy and mean confidence (NaN for empty bins) of one prediction matrix."""
    probs, labels = _prep(probs, labels, np.float64)
    pred = probs.argmax(-1)
    conf = probs.max(-1)
    count, hits, confs = bin_sums(conf.reshape(1, -1), (pred == labels).reshape(1, -1), bins)
    count, hits, confs = count[0], hits[0], confs[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "correct": hits, "confidence_sum": confs,
                "accuracy": hits / count, "confidence": confs / count}


def disagreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of examples whose predicted classes differ."""
    return float(np.mean(np.asarray(pred_a) != np.asarray(pred_b)))
