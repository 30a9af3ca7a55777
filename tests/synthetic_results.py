"""A synthetic results folder with the rows each method of the trainer writes (points, members, ensembles,
early stopping, Fort et al.'s samples, per-epoch trajectories, weights), written with the real Parquet
writers (trainers.folder.to_arrow / Folder.write_table): big sweeps for the report's layout tests in seconds.

Probabilities are random but honest: each point's predictions are right with a probability that depends on
its kind, so accuracies, ensembles and disagreements behave like a real run's.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from trainers.config import make_config
from trainers.folder import Folder, to_arrow
from trainers.results import trial_row

# Each variant: trial fields, and the points its method evaluates as (name, kind, member_of).
VARIANTS: dict[str, dict[str, Any]] = {
    "point": dict(shape="point", samplers="all", sampler_checkpoints=3, sampler_rank=2),
    "dropout_1": dict(shape="point", dropout=0.1),
    "dropout_3": dict(shape="point", dropout=0.3),
    "line": dict(shape="line"),
    "line_lw": dict(shape="line", layerwise=True),
    "curve": dict(shape="curve"),
    "simplex": dict(shape="simplex", endpoints=3),
    "independent": dict(method="independent", shape="line"),
    "swa": dict(method="swa", shape="point", swa_start=2),
    "mimo": dict(method="mimo", shape="point"),
}
MAIN = {"subspace": None, "independent": ("ensemble_endpoints", "ensemble_endpoints"),
        "swa": ("swa", "ensemble_snapshots"), "mimo": ("ensemble_members", "ensemble_members")}


def points(cfg: Any) -> list[tuple[str, str, str, float | None, list[float] | None]]:
    """(point, kind, member_of, alpha, coords) of the final evaluation, as trainers/methods evaluate them."""
    out: list[tuple[str, str, str, float | None, list[float] | None]] = []
    k = cfg.ensemble_samples
    if cfg.method == "mimo":
        return [(f"member_{i}", "member", "members", None, None) for i in range(cfg.mimo_heads)]
    if cfg.method == "swa":
        return [("swa", "swa", "", None, None), ("point", "center", "", None, None)] + \
            [(f"snapshot_{i}", "snapshot", "snapshots", None, None) for i in range(2)]
    if cfg.shape == "point":
        out.append(("point", "center", "", None, [1.0]))
    else:
        m, line = cfg.n_points if cfg.shape != "curve" else 2, cfg.shape in ("line", "curve")
        out += [(f"endpoint_{i}", "endpoint", "endpoints", float(i) if line else None,
                 [float(i == j) for j in range(m)]) for i in range(m)]
        out.append(("center", "center", "", 0.5 if line else None, [1 / m] * m))
        if line:
            out += [(f"alpha_{a:.2f}", "alpha", "", a, [1 - a, a]) for a in np.linspace(0, 1, cfg.alpha_grid)]
        if cfg.shape == "simplex" and cfg.endpoints == 3:
            g = cfg.simplex_grid
            out += [(f"simplex_{i}_{j}_{g - i - j}", "simplex", "", None, [i / g, j / g, (g - i - j) / g])
                    for i in range(g + 1) for j in range(g + 1 - i)]
        out += [(f"sample_{i}", "sample", "samples", None, None) for i in range(k)]
    for s in ("random", "dropout", "gaussian", "pca") if cfg.samplers else ():
        out += [(f"{s}_{i}", s, s, None, None) for i in range(k)]
    return out


def _probs(rng: np.random.Generator, labels: np.ndarray, classes: int, skill: float) -> np.ndarray:
    logits = rng.normal(size=(len(labels), classes)) + skill * np.eye(classes)[labels]
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    conf, pred = p.max(1), p.argmax(1)
    p_true = p[np.arange(len(y)), y]
    return dict(accuracy=float((pred == y).mean()), nll=float(-np.log(np.maximum(p_true, 1e-12)).mean()),
                brier=float(((p - np.eye(p.shape[1])[y]) ** 2).sum(1).mean()),
                ece=float(abs((pred == y).mean() - conf.mean())))


def write_study(root: Path, sweep: str = "synth", variants: Iterable[str] = tuple(VARIANTS),
                label_noise: Iterable[float] = (0.0, 0.1, 0.2, 0.3, 0.4), batchnorm: Iterable[bool] = (True, False),
                lr: Iterable[float] = (0.05, 0.1), seeds: int = 2, n: int = 30, classes: int = 3, epochs: int = 4,
                seed: int = 0) -> int:
    """Write a sweep of len(variants) x label_noise x batchnorm x lr groups x `seeds` seeds (200 groups by
    default); returns the number of trials."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    tables: dict[str, list[dict[str, Any]]] = {t: [] for t in ("trials", "evals", "predictions", "weights")}
    count = 0
    for v, noise, bn, lr_, s in product(list(variants), label_noise, batchnorm, lr, range(seeds)):
        cfg = make_config({"epochs": epochs, "alpha_grid": 5, "simplex_grid": 2, "ensemble_samples": 3,
                           "early_stop": True, "epoch_predictions": True, "weight_projection": 8,
                           "label_noise": noise, "batchnorm": bn, "lr": lr_, "seed": s, **VARIANTS[v]})
        key = cfg.key()
        ident = dict(sweep=sweep, trial_key=key, attempt=0)
        main, ens = MAIN[cfg.method] or (("point", "") if cfg.shape == "point" else ("center", "ensemble_endpoints"))
        skill = 2.5 - 3 * noise + 0.3 * rng.random()
        final = {}
        for name, kind, member_of, alpha, coords in points(cfg):
            barrier = cfg.method == "independent" and kind in ("center", "alpha", "sample") and name != "alpha_0.00" \
                and name != "alpha_1.00"
            p = _probs(rng, y, classes, skill - (2.5 if barrier else 0.0))
            final[name] = (p, kind, member_of, alpha, coords)
        groups: dict[str, list[np.ndarray]] = {}
        for p, _, member_of, _, _ in final.values():
            if member_of:
                groups.setdefault(member_of, []).append(p)
        for g, ms in groups.items():
            final[f"ensemble_{g}"] = (np.mean(ms, 0).astype(np.float32), "ensemble", "", None, None)
        final["early_stop"] = (_probs(rng, y, classes, skill), "early_stop", "", None, None)
        for name, (p, kind, member_of, alpha, coords) in final.items():
            for split in ("test", "val"):
                tables["evals"].append(dict(ident, epoch=epochs, split=split, point=name, kind=kind, alpha=alpha,
                                            coords=coords, members=1, member_of=member_of, corruption="",
                                            severity=0, **_scores(p, y)))
            tables["predictions"].append(dict(ident, epoch=epochs, split="test", point=name, kind=kind,
                                              member_of=member_of, n_classes=classes, probs=p.ravel().tolist(),
                                              labels=y.tolist()))
        val = "ensemble_members" if cfg.method == "mimo" else "point" if cfg.shape == "point" else "center"
        for e in range(1, epochs):
            p = _probs(rng, y, classes, skill * e / epochs)
            tables["predictions"].append(dict(ident, epoch=e, split="test", point=val, kind="center", member_of="",
                                              n_classes=classes, probs=p.ravel().tolist(), labels=y.tolist()))
        for e in range(1, epochs + 1):
            tables["weights"].append(dict(ident, epoch=e, point="endpoint_0" if cfg.method == "independent" else val,
                                          norm=1.0, projection=rng.normal(size=8).tolist()))
        tables["trials"].append(trial_row(cfg.to_dict(), **ident, name=key, status="completed", error="",
                                          main_point=main, main_ensemble=ens, best_epoch=epochs - 1))
        count += 1
    for t in ("evals", "predictions", "weights", "trials"):  # trials last, as trials write them
        Folder(str(root)).write_table(f"{t}/part-0.parquet", to_arrow(t, tables[t]))
    return count


def write_trials(root: Path, trials: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]],
                 sweep: str = "planted") -> int:
    """Trials with the given config values and exactly the given evals rows (each a dict with `point` and
    the metrics; `split` defaults to test, `kind` to what the point's name says, `member_of`, `corruption`
    and `severity` to none), written with the real writers: for tests that plant an effect and so know the
    answer. Returns the number of trials."""
    kinds = {"endpoint_": ("endpoint", "endpoints"), "ensemble_": ("ensemble", ""), "member_": ("member", "members"),
             "snapshot_": ("snapshot", "snapshots"), "center": ("center", ""), "point": ("center", ""),
             "swa": ("swa", ""), "early_stop": ("early_stop", ""), "black": ("colour", ""),
             "white": ("colour", ""), "gap": ("gap", "")}
    tables: dict[str, list[dict[str, Any]]] = {"trials": [], "evals": []}
    count = 0
    for values, rows in trials:
        cfg = make_config({"epochs": 4, **values})
        ident = dict(sweep=sweep, trial_key=cfg.key(), attempt=0)
        main, ens = {**MAIN, "mpo": ("black", "")}.get(cfg.method) or \
            (("point", "") if cfg.shape == "point" else ("center", "ensemble_endpoints"))
        for r in rows:
            kind, member_of = next((v for k, v in kinds.items() if r["point"].startswith(k)), ("center", ""))
            tables["evals"].append({**ident, "epoch": cfg.epochs, "split": "test", "kind": kind, "members": 1,
                                    "member_of": member_of, "corruption": "", "severity": 0, **r})
        tables["trials"].append(trial_row(cfg.to_dict(), **ident, name=cfg.key(), status="completed", error="",
                                          main_point=main, main_ensemble=ens))
        count += 1
    for t in ("evals", "trials"):  # trials last, as trials write them
        Folder(str(root)).write_table(f"{t}/part-0.parquet", to_arrow(t, tables[t]))
    return count
