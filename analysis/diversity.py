"""Diversity of solutions (Fort, Hu & Lakshminarayanan): cosine similarity of weights across checkpoints
and seeds, prediction disagreement, t-SNE of prediction trajectories, and accuracy against diversity.

Weights come from the `weights` table: a fixed Gaussian random projection of the flattened weights (the
same matrix for every trial of one architecture), so cosines between projections estimate cosines between
the weights. Predictions come from `predictions` (per-epoch rows need `epoch_predictions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import ID
from analysis.predictions import Probs, final_main, load_core, trajectory
from analysis.tables import is_standard
from analysis.trials import REPLICATE, as_results, main_points, with_groups


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """(R, D) vectors -> (R, R) cosine similarities (0 for a zero vector)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return np.clip(u @ u.T, -1.0, 1.0)


def disagreement_matrix(preds: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """(R, N) predicted classes -> (R, R) fraction of examples on which two rows' classes differ."""
    preds = np.asarray(preds, dtype=np.int64)
    c = int(preds.max()) + 1 if n_classes is None else n_classes
    onehot = np.zeros((preds.shape[0], preds.shape[1] * c), np.float32)
    onehot[np.arange(preds.shape[0])[:, None], np.arange(preds.shape[1]) * c + preds] = 1.0
    agree = onehot @ onehot.T  # counts of equal predictions (exact in float32 below 2^24 examples)
    return 1.0 - agree.astype(np.float64) / preds.shape[1]


def _pick_trials(candidates: pd.DataFrame, max_trials: int, replicate: Iterable[str],
                 prefer: Iterable[str] = ()) -> pd.DataFrame:
    """Trials of one group (seeds of one config) to compare: the group with most trials, preferring groups
    with trials in `prefer` (e.g. those with samples around their solution), then standard training (as
    Fort et al.); at most max_trials, lowest seeds first."""
    if candidates.empty:
        return candidates.assign(group="", group_label="")
    g = with_groups(candidates, replicate)
    size = g.groupby("group")["trial_key"].transform("nunique")
    liked = g["trial_key"].isin(set(prefer)).groupby(g["group"]).transform("any")
    g = g.assign(_size=size.clip(upper=max_trials), _liked=liked, _std=~is_standard(g))
    best = g.sort_values(["_size", "_liked", "_std", "group_label"],
                         ascending=[False, False, True, True]).iloc[0]["group"]
    return g[g["group"] == best].sort_values("seed").head(max_trials).drop(columns=["_size", "_liked", "_std"])


def _trial_rows(rows: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    return rows.merge(trials[ID + ["seed", "group_label"]], on=ID, suffixes=("", "_t")) \
        .sort_values(["seed", "trial_key", "epoch"]).reset_index(drop=True)


def _index(rows: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(rows[["trial_key", "seed", "epoch"]].astype({"seed": int, "epoch": int}))


def weight_point(points: set[str], main: str) -> str | None:
    """Which recorded weights stand for a trial's network along its trajectory: the trained network
    (`point`; for SWA the SGD iterate), else the centre of a subspace judged by it, else the main point,
    else the first endpoint (an `independent` pair: its centre is the barrier, not a network)."""
    for p in ("point", "center" if main == "center" else None, main, "endpoint_0"):
        if p in points:
            return p
    return None


def weight_similarity(results: Any, max_trials: int = 4, trial_keys: Sequence[str] | None = None,
                      replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """Cosine similarity of the recorded weights (weight_point) of a few trials of one group over all
    their recorded epochs: within a trajectory and across seeds. A square DataFrame indexed by
    (trial_key, seed, epoch) on both axes; empty when no weights were recorded."""
    results = as_results(results)
    w = results.weights
    trials = results.trials
    if w.empty:
        return pd.DataFrame()
    mains = dict(zip(trials["trial_key"], main_points(trials), strict=True))
    chosen_point = {k: weight_point(set(p), mains.get(k, "")) for k, p in w.groupby("trial_key")["point"]}
    w = w[w["point"] == w["trial_key"].map(chosen_point)]
    have = trials.merge(w[ID].drop_duplicates(), on=ID)
    chosen = have[have["trial_key"].isin(trial_keys)] if trial_keys is not None else \
        _pick_trials(have, max_trials, replicate)
    rows = _trial_rows(w, with_groups(chosen, replicate) if "group_label" not in chosen else chosen)
    if rows.empty:
        return pd.DataFrame()
    m = cosine_matrix(np.stack(rows["projection"].to_list()))
    idx = _index(rows)
    return pd.DataFrame(m, index=idx, columns=idx)


def prediction_disagreement(results: Any, max_trials: int = 4, trial_keys: Sequence[str] | None = None,
                            probs: Probs | None = None, replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """Fraction of test examples on which two checkpoints' predicted classes differ, over the per-epoch
    predictions of a few trials of one group. Square DataFrame indexed by (trial_key, seed, epoch)."""
    results = as_results(results)
    probs = load_core(results) if probs is None else probs
    traj = trajectory(probs.meta)
    if traj.empty:
        return pd.DataFrame()
    have = results.trials.merge(traj[ID].drop_duplicates(), on=ID)
    if trial_keys is not None:
        chosen = with_groups(have, replicate)
        chosen = chosen[chosen["trial_key"].isin(trial_keys)]
    else:
        chosen = _pick_trials(have, max_trials, replicate)
    rows = _trial_rows(traj.drop(columns=["seed"], errors="ignore"), chosen)
    if rows.empty or rows["block"].nunique() != 1:
        return pd.DataFrame()
    p, _ = probs.arrays(rows)
    m = disagreement_matrix(p.argmax(-1), p.shape[-1])
    idx = _index(rows)
    return pd.DataFrame(m, index=idx, columns=idx)


def tsne_trajectories(results: Any, max_trials: int = 8, max_examples: int = 1000, max_checkpoints: int = 40,
                      seed: int = 0, probs: Probs | None = None,
                      replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """2-D t-SNE of the softmax outputs (first max_examples test examples, flattened) of the recorded
    checkpoints (at most max_checkpoints per trajectory, evenly spaced, the last kept) of up to max_trials
    trajectories of one group (preferring one with samples around its solutions), plus their final
    ensemble members (subspace samples and endpoints, Fort et al.'s samples, SWA snapshots...). One row per
    embedded prediction: trial_key, seed, group_label, epoch, kind ("checkpoint" or the members' group:
    "samples", "random", ...), x, y."""
    from sklearn.manifold import TSNE  # imported here: scikit-learn is slow to import

    results = as_results(results)
    probs = load_core(results) if probs is None else probs
    meta = probs.meta
    cols = ["trial_key", "seed", "group_label", "epoch", "kind", "x", "y"]
    traj = trajectory(meta)
    counts = traj.groupby(ID)["epoch"].nunique()
    keys = counts[counts >= 2].reset_index()
    if keys.empty:
        return pd.DataFrame(columns=cols)
    trials = results.trials.merge(keys[ID], on=ID)
    block = traj.merge(trials[ID], on=ID)["block"].mode().iloc[0]  # one test set: the most common
    trials = trials.merge(traj[traj["block"] == block][ID].drop_duplicates(), on=ID)
    members = meta[(meta["member_of"] != "") & (meta["block"] == block)]
    trials = _pick_trials(trials, max_trials, replicate, prefer=members["trial_key"])
    rows = traj[traj["block"] == block].assign(kind="checkpoint")
    rows = rows.groupby(ID, group_keys=False)[rows.columns.tolist()].apply(
        lambda d: d.iloc[np.unique(np.linspace(len(d) - 1, 0, min(len(d), max_checkpoints)).round().astype(int))])
    samples = members.assign(kind=members["member_of"])
    samples = samples[samples["epoch"] == samples.groupby(ID)["epoch"].transform("max")]
    rows = pd.concat([rows, samples]).drop(columns=["seed", "group_label"], errors="ignore")
    rows = rows.merge(trials[ID + ["seed", "group_label"]], on=ID).reset_index(drop=True)
    if len(rows) < 3:
        return pd.DataFrame(columns=cols)
    p, _ = probs.arrays(rows)
    x = p[:, :max_examples].reshape(len(rows), -1).astype(np.float32)
    perplexity = float(min(30.0, max(1.0, (len(rows) - 1) / 3)))
    # exact gradients are faster than Barnes-Hut for the few hundred points embedded here
    method = "exact" if len(rows) <= 1000 else "barnes_hut"
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
               method=method).fit_transform(x)
    return rows.assign(x=emb[:, 0], y=emb[:, 1])[cols]


def accuracy_vs_diversity(results: Any, probs: Probs | None = None, max_trials: int | None = None,
                          late: float = 0.5, budget: int = 50_000_000,
                          replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """For every trial's final main point (the reference) and each other function: its `accuracy`, the
    fraction of test predictions that differ from the reference (`disagreement`), and Fort et al.'s
    normalised `diversity` = disagreement / (1 - reference accuracy). Sources of the other functions, named
    as the ensemble curves' sources: `seeds` (the other seeds' main points), `checkpoints` (earlier epochs
    of the trajectory, from the last `late` fraction of training: Fort et al. take late checkpoints) and
    every group of ensemble members the trial recorded (`endpoints`, `samples`, `snapshots`, `members`, and
    Fort et al.'s `random`, `dropout`, `gaussian`, `pca` samples around the solution). Trials are taken
    whole groups at a time, groups with the most sources first, while their predicted classes fit in
    `budget` cells (and at most max_trials trials): this bounds the memory a large sweep would take."""
    results = as_results(results)
    probs = load_core(results) if probs is None else probs
    cols = ["sweep", "trial_key", "seed", "group", "group_label", "series", "setting", "source", "other", "epoch",
            "accuracy", "disagreement", "diversity", "reference_accuracy"]
    names = ["group", "group_label", "series", "setting"]
    meta = probs.meta.drop(columns=names, errors="ignore")
    if meta.empty:
        return pd.DataFrame(columns=cols)
    trials = with_groups(results.trials, replicate)
    meta = meta.merge(trials[ID + names + ["series_order"]], on=ID)
    richness = meta.groupby("group")["member_of"].nunique()
    cells = meta.groupby("group")["n_examples"].sum()
    order = sorted(cells.index, key=lambda g: (-richness[g], meta.loc[meta["group"] == g, "series_order"].iloc[0], g))
    keep, used, n = [], 0, 0
    for g in order:
        size = meta.loc[meta["group"] == g, "trial_key"].nunique()
        if keep and (used + cells[g] > budget or (max_trials is not None and n + size > max_trials)):
            break
        keep.append(g)
        used, n = used + cells[g], n + size
    meta = meta[meta["group"].isin(set(keep))].drop(columns="series_order")
    # predicted classes and accuracy of every row, once (a few rows at a time: bounded memory)
    pred = np.full((len(meta), int(meta["n_examples"].max())), -1, np.int32)
    acc = np.zeros(len(meta))
    meta = meta.reset_index(drop=True)
    for _, rows in meta.groupby("block"):
        for i in range(0, len(rows), 64):
            part = rows.iloc[i:i + 64]
            p, y = probs.arrays(part)
            pb = p.argmax(-1)
            pred[part.index, : pb.shape[1]] = pb
            acc[part.index] = (pb == y).mean(1)
    meta = meta.assign(_i=np.arange(len(meta)), accuracy=acc)
    ref = final_main(meta)
    traj = trajectory(meta)
    out = []
    members = meta[meta["member_of"] != ""]
    for _, r in ref.iterrows():
        own = members[(members["trial_key"] == r["trial_key"]) & (members["epoch"] == r["epoch"])]
        others = {
            "seeds": ref[(ref["group"] == r["group"]) & (ref["trial_key"] != r["trial_key"])],
            "checkpoints": traj[(traj["trial_key"] == r["trial_key"]) & (traj["epoch"] < r["epoch"])
                                & (traj["epoch"] >= (1 - late) * r["epoch"])],
            **{g: o for g, o in own.groupby("member_of", sort=True)},
        }
        for source, o in others.items():
            o = o[o["block"] == r["block"]]
            if o.empty:
                continue
            n = int(r["n_examples"])
            dis = (pred[o["_i"].to_numpy(), :n] != pred[r["_i"], :n]).mean(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                div = dis / (1.0 - r["accuracy"])
            out.append(pd.DataFrame({
                "sweep": r["sweep"], "trial_key": r["trial_key"], "seed": r["seed"], "group": r["group"],
                "group_label": r["group_label"], "series": r["series"], "setting": r["setting"], "source": source,
                "other": o["trial_key"].to_numpy() if source == "seeds" else o["point"].to_numpy(),
                "epoch": o["epoch"].to_numpy(), "accuracy": o["accuracy"].to_numpy(),
                "disagreement": dis, "diversity": div, "reference_accuracy": r["accuracy"],
            }))
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)
