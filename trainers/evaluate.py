"""The final evaluation of a trial, for any method: every point the method visits, the ensembles of their
members (probabilities averaged, never logits), the state of the best validation epoch (`early_stop`) and
samples around the solution (Fort et al.: trainers/samplers.py), as rows of the evals and predictions tables.
"""

from __future__ import annotations

from typing import Any

import torch

from trainers import samplers
from trainers.config import TrialConfig, sampler_list
from trainers.corruption_sets import CorruptedSets
from trainers.data import Data
from trainers.methods.base import Method, Point
from trainers.metrics import classification_metrics

MAX_DRAWS = 10  # a sampler draws at most this many times ensemble_samples samples to find ones above the floor


def splits(d: Data) -> dict[str, torch.Tensor]:
    return {s: getattr(d, f"{s}_x") for s in ("test", "val") if len(getattr(d, f"{s}_y"))}


def evaluate(cfg: TrialConfig, method: Method, d: Data, g: torch.Generator, epoch: int,
             best: dict[str, Any] | None = None,
             trajectory: samplers.Trajectory | None = None,
             corrupted: CorruptedSets | None = None) -> tuple[list[dict], list[dict]]:
    """Rows of the evals and predictions tables for the finished trial. `best`: the state of the best
    validation epoch (early stopping); `trajectory`: the solution's weights at its last epochs (samplers);
    `corrupted`: corrupted test sets for the main point and ensemble."""
    xs = splits(d)
    evals: list[dict] = []
    preds: list[dict] = []
    members: dict[str, list[dict[str, torch.Tensor]]] = {}
    cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def emit(p: Point, probs: dict[str, torch.Tensor], n: int = 1) -> None:
        for split, pr in probs.items():
            evals.append(dict(epoch=epoch, split=split, point=p.name, kind=p.kind, alpha=p.alpha,
                              coords=None if p.coords is None else p.coords.float().cpu(), members=n,
                              member_of=p.member_of, corruption="", severity=0,
                              **classification_metrics(pr, getattr(d, f"{split}_y"), cfg.ece_bins)))
        if cfg.save_predictions:
            preds.append(dict(epoch=epoch, split="test", point=p.name, kind=p.kind, member_of=p.member_of,
                              n_classes=d.classes, probs=probs["test"].cpu(), labels=d.test_y.int().cpu()))
        if p.member_of:
            members.setdefault(p.member_of, []).append(probs)

    points = method.points(g)
    for p in points:
        key = p.key()
        if key is None:
            emit(p, method.predict(p, xs))
            continue
        if key not in cache:
            cache[key] = method.predict(p, xs)
        emit(p, cache[key])
    if best is not None:
        emit(*early_stop(method, best["state"], xs))
    for kind in sampler_list(cfg.samplers):
        for p, probs in sample(kind, cfg, method, trajectory, xs, d, g):
            emit(p, probs)
    evals += method.extra_evals(epoch)
    for group, ms in members.items():
        if len(ms) >= 2:
            emit(Point(f"ensemble_{group}", "ensemble"), {s: torch.stack([m[s] for m in ms]).mean(0) for s in ms[0]},
                 len(ms))
    if corrupted is not None:
        evals += corruption_rows(cfg, method, points, corrupted, epoch)
    return evals, preds


# -- corruptions: the main point and the main ensemble on corrupted test sets -----------------------------
def corruption_rows(cfg: TrialConfig, method: Method, points: list[Point], sets: CorruptedSets,
                    epoch: int) -> list[dict]:
    """Evals rows (split test) of the trial's main point and its main ensemble's members on every corrupted
    set, and of the ensemble itself. Each point is placed once (BatchNorm from clean training data) and then
    reads every set; the sets are built as they are read, one at a time."""
    ens = method.ensemble
    chosen = [p for p in points if p.name == method.main or (ens and p.member_of and f"ensemble_{p.member_of}" == ens)]
    rows: list[dict] = []
    members: dict[tuple[str, int], list[torch.Tensor]] = {}

    def row(p: Point, key: tuple[str, int], probs: torch.Tensor, n: int = 1) -> dict:
        return dict(epoch=epoch, split="test", point=p.name, kind=p.kind, alpha=p.alpha,
                    coords=None if p.coords is None else p.coords.float().cpu(), members=n, member_of=p.member_of,
                    corruption=key[0], severity=key[1],
                    **classification_metrics(probs, sets.labels(key), cfg.ece_bins))

    for p in chosen:
        for key, probs in method.predict(p, sets).items():
            rows.append(row(p, key, probs))
            if p.member_of and f"ensemble_{p.member_of}" == ens:
                members.setdefault(key, []).append(probs)
    for key, ms in members.items():
        if len(ms) >= 2:
            rows.append(row(Point(ens, "ensemble"), key, torch.stack(ms).mean(0), len(ms)))
    return rows
def probes(cfg: TrialConfig, method: Method, d: Data, epoch: int) -> list[dict]:
    """Rows of the probes table: Hessian, Goldilocks and stiffness probes at the points named by
    `probe_points` (trainers/probes.py; imported only when asked: it needs curvlinops and SciPy)."""
    if not cfg.probes:
        return []
    from trainers.probes import probe_rows

    return probe_rows(cfg, method, d, epoch)


def early_stop(method: Method, state: dict[str, torch.Tensor],
               xs: dict[str, torch.Tensor]) -> tuple[Point, dict[str, torch.Tensor]]:
    """The validation point of the best validation epoch's state; the trained state is put back after."""
    now = {k: v.clone() for k, v in method.state_dict().items()}
    method.load_state_dict(state)
    p = method.val_point()
    probs = method.predict(p, xs)
    method.load_state_dict(now)
    return Point("early_stop", "early_stop", p.coords, p.alpha), probs


def sample(kind: str, cfg: TrialConfig, method: Method, trajectory: samplers.Trajectory | None,
           xs: dict[str, torch.Tensor], d: Data, g: torch.Generator) -> list[tuple[Point, dict[str, torch.Tensor]]]:
    """`ensemble_samples` samples of one sampler around the solution (method.solution()), each kept only
    when its validation accuracy reaches `sampler_floor`; at most MAX_DRAWS times as many draws."""
    w = method.flat(method.solution()).detach()
    out: list[tuple[Point, dict[str, torch.Tensor]]] = []
    for _ in range(MAX_DRAWS * cfg.ensemble_samples):
        if len(out) == cfg.ensemble_samples:
            break
        p = Point(f"{kind}_{len(out)}", kind, weights=samplers.draw(kind, w, trajectory, cfg, g), member_of=kind)
        probs = method.predict(p, xs)
        if cfg.sampler_floor and "val" in probs and \
                float((probs["val"].argmax(1) == d.val_y).float().mean()) < cfg.sampler_floor:
            continue
        out.append((p, probs))
    return out
