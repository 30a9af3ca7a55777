"""Prediction rows as dense numpy arrays: probabilities stacked once into (rows, N, C), labels (rows, N).

`Results.predictions` converts every `probs` cell into a separate Python-managed array; for ensemble
curves over thousands of trials we want them as numpy without conversion. `load_probs` reads the
predictions table in one Arrow scan (filtered by split, point/kind and the chosen trials), keeps the rows
`analysis.load` would keep (the chosen attempt, last of repeated rows; unreadable files left out and named, as
there), and hands out zero-copy views of
the list cells; `Probs.arrays` stacks the rows one analysis needs into (R, N, C).
Rows of different test sets (N, C) are told apart by `block`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analysis.load import ID, NATURAL_KEYS
from analysis.trials import as_results, barrier_centres, main_points

META = ["epoch", "split", "point", "kind", "member_of", "n_classes"]
# Points whose probabilities a trajectory (per-epoch predictions) may be recorded at, besides main points.
TRAJECTORY_POINTS = ("point", "center")
# Ensemble members of results written before `member_of` existed: their kind says which ensemble.
LEGACY_MEMBERS = {"endpoint": "endpoints", "sample": "samples"}


@dataclass
class Probs:
    """`meta` has one row per prediction row (identity, epoch, split, point, kind, n_classes, n_examples, the
    trial's config, `block` = which test set (rows of one block share N and C), `row` = index into the
    row arrays). The probabilities stay in the Arrow buffers they were read into (zero-copy views): copying
    hundreds of MB into a fresh array costs more in page faults than the copy itself."""

    meta: pd.DataFrame
    probs: list[np.ndarray] = field(default_factory=list)   # per row: flat (N*C,) float32 view
    labels: list[np.ndarray] = field(default_factory=list)  # per row: (N,) int32 view

    def __len__(self) -> int:
        return len(self.meta)

    def arrays(self, rows: pd.DataFrame | Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (R, N, C) float32 and labels (R, N) int32 of the given meta rows (one test set)."""
        m = rows if isinstance(rows, pd.DataFrame) else self.meta.loc[list(rows)]
        if m["block"].nunique() > 1:
            raise ValueError(f"rows come from {m['block'].nunique()} different test sets (n_examples x n_classes)")
        idx = m["row"].to_numpy(dtype=np.int64)
        n, c = (int(m["n_examples"].iloc[0]), int(m["n_classes"].iloc[0])) if len(m) else (0, 0)
        if not len(idx):
            return np.zeros((0, n, c), np.float32), np.zeros((0, n), np.int32)
        p = np.stack([self.probs[i] for i in idx]).reshape(len(idx), n, c)
        return p, np.stack([self.labels[i] for i in idx])


def _row_views(col: pa.ChunkedArray, dtype: type) -> list[np.ndarray]:
    """One numpy view per list cell, into the column's own buffers (no copy)."""
    out: list[np.ndarray] = []
    for chunk in col.chunks:
        values = chunk.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        offsets = chunk.offsets.to_numpy()
        out += [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return out


def load_probs(results: Any, split: str = "test", points: Iterable[str] | None = None,
               kinds: Iterable[str] | None = None, keep: Callable[[pd.DataFrame], pd.Series] | None = None,
               final_only: bool = False, members: bool = False) -> Probs:
    """Stack the probabilities of the chosen trials' prediction rows.

    points/kinds: keep rows whose `point` is in `points` or whose `kind` is in `kinds` (both None: all);
    members: also every ensemble member (a row with `member_of` set).
    keep: an extra row filter on the meta DataFrame (which has the trials' config columns merged in).
    final_only: keep only each trial's last epoch (per point).
    """
    results = as_results(results)
    trials = results.trials
    if "status" in trials:
        trials = trials[trials["status"] == "completed"]
    cols = ID + META + ["probs", "labels"]
    point_set = pa.array(list(points), pa.string()) if points is not None else None
    kind_set = pa.array(list(kinds), pa.string()) if kinds is not None else None
    key_set = pa.array(trials["trial_key"].unique().tolist(), pa.string())

    def wanted(b: pa.RecordBatch) -> pa.Array:
        mask = pc.and_(pc.equal(b["split"], split), pc.is_in(b["trial_key"], value_set=key_set))
        if point_set is not None or kind_set is not None:
            sel = [pc.is_in(b[c], value_set=v) for c, v in (("point", point_set), ("kind", kind_set)) if v is not None]
            if members:
                sel.append(pc.fill_null(pc.not_equal(b["member_of"], ""), False))
            any_of = sel[0]
            for more in sel[1:]:
                any_of = pc.or_(any_of, more)
            mask = pc.and_(mask, any_of)
        return pc.fill_null(mask, False)

    table = results.folder.read_arrow("predictions", cols, keep=wanted)

    meta = table.select(ID + META).to_pandas()
    meta["_pos"] = np.arange(len(meta))
    meta["n_examples"] = pc.list_value_length(table["labels"]).to_numpy(zero_copy_only=False)
    meta = meta.merge(trials.assign(main_point=main_points(trials)), on=ID, how="inner",
                      suffixes=("", "_trial")).sort_values("_pos")
    meta["member_of"] = member_groups(meta)
    meta = meta.drop_duplicates(ID + NATURAL_KEYS["predictions"], keep="last")
    if final_only and len(meta):
        last = meta.groupby(ID + ["point"])["epoch"].transform("max")
        meta = meta[meta["epoch"] == last]
    if keep is not None and len(meta):
        meta = meta[keep(meta)]
    meta = meta.sort_values("_pos").reset_index(drop=True)

    meta["block"] = meta.groupby(["n_examples", "n_classes"]).ngroup() if len(meta) else []
    meta["row"] = meta["_pos"]
    probs = _row_views(table["probs"], np.float32)
    labels = _row_views(table["labels"], np.int32)
    return Probs(meta.drop(columns="_pos"), probs, labels)


def load_core(results: Any, split: str = "test") -> Probs:
    """The prediction rows every analysis here uses, loaded once and shared: each trial's main point (every
    recorded epoch), the points trajectories are recorded at, and every ensemble member."""
    results = as_results(results)
    trials = results.trials
    mains = set(main_points(trials)) if len(trials) else set()
    return load_probs(results, split=split, points=sorted(mains | set(TRAJECTORY_POINTS)),
                      kinds=list(LEGACY_MEMBERS), members=True)


def member_groups(meta: pd.DataFrame) -> pd.Series:
    """The ensemble each row is a member of ("" for none): `member_of`, or for rows written before that
    column existed, what their kind says (endpoint -> endpoints, sample -> samples)."""
    legacy = meta["kind"].map(LEGACY_MEMBERS).fillna("")
    if "member_of" not in meta:
        return legacy
    return meta["member_of"].where(meta["member_of"].notna(), legacy).astype(str)


def final_main(meta: pd.DataFrame) -> pd.DataFrame:
    """Each trial's main point (trials.main_points: `point`, `center`, `swa`, `ensemble_endpoints`, ...) at
    its last epoch."""
    if meta.empty:
        return meta
    rows = meta[meta["point"] == main_points(meta)]
    last = rows.groupby(ID)["epoch"].transform("max")
    return rows[rows["epoch"] == last]


def trajectory(meta: pd.DataFrame) -> pd.DataFrame:
    """One row per trial and epoch: the network the trainer validates every epoch (`epoch_predictions`), at
    the point where its per-epoch predictions are recorded, with the final evaluation of that point as the
    last epoch. A `center` trajectory counts only for a trial judged by its centre: the centre of
    separately trained endpoints (`independent`) is the barrier between them, not a network."""
    if meta.empty:
        return meta
    last = meta.groupby(ID)["epoch"].transform("max")
    early = meta[meta["epoch"] < last]
    where = early.groupby(ID)["point"].first().rename("_at").reset_index()
    rows = meta.merge(where, on=ID)
    rows = rows[(rows["point"] == rows["_at"]) & ~((rows["point"] == "center") & barrier_centres(rows))]
    return rows.drop(columns="_at").sort_values("epoch").drop_duplicates(ID + ["epoch"], keep="first")
