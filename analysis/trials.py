"""Which trials belong together: seed groups, the axes a sweep varies, readable labels and captions.

A *group* is the set of trials of one sweep whose configs differ only in the replicate fields (`seed` by
default): its members are the seeds that mean ± std and deep ensembles run over. Grouping uses the
trial's `config_json`, so every config field (including ones added later) separates groups.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from analysis.load import ID, Results, load
from trainers.config import FIELDS

REPLICATE = ("seed",)
# Fields that do not change the numbers (not in the trial key) never separate groups.
NOT_AXES = {"data_dir", "download", "device", "checkpoint_every", "corruption_dir"}
# Order in which varying axes are listed (then any other field, alphabetically).
AXIS_ORDER = ("method", "shape", "endpoints", "layerwise", "batchnorm", "label_noise", "model", "dataset")


def as_results(results: Any) -> Any:
    """A Results (or View) from a path or a Results-like object."""
    return load(str(results)) if isinstance(results, (str, bytes)) or hasattr(results, "__fspath__") else results


def config_fields(trials: pd.DataFrame) -> list[str]:
    """Config columns present in `trials` (one per TrialConfig field)."""
    return [f for f in FIELDS if f in trials.columns and f != "extra"]


def group_keys(trials: pd.DataFrame, replicate: Iterable[str] = REPLICATE) -> pd.Series:
    """One string per trial naming its group: the sweep and the config without the replicate fields."""
    drop = set(replicate) | NOT_AXES
    if trials.empty:
        return pd.Series([], dtype=str, index=trials.index)

    def key(row: tuple[str, str]) -> str:
        sweep, cfg = row
        d = {k: v for k, v in json.loads(cfg or "{}").items() if k not in drop}
        return sweep + "\x1f" + json.dumps(d, sort_keys=True, default=str)

    return pd.Series([key(r) for r in zip(trials["sweep"], trials["config_json"], strict=True)],
                     index=trials.index)


def varying_axes(trials: pd.DataFrame, replicate: Iterable[str] = REPLICATE,
                 exclude: Iterable[str] = ()) -> list[str]:
    """Config fields that take more than one value within some sweep (replicates and `exclude` left out)."""
    skip = set(replicate) | NOT_AXES | set(exclude)
    cols = [c for c in config_fields(trials) if c not in skip]
    out = []
    for c in cols:
        n = trials.groupby("sweep")[c].nunique(dropna=False)
        if (n > 1).any():
            out.append(c)
    rank = {a: i for i, a in enumerate(AXIS_ORDER)}
    return sorted(out, key=lambda a: (rank.get(a, len(rank)), a))


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def label(row: pd.Series | dict[str, Any], axes: Iterable[str]) -> str:
    """'shape=line, batchnorm=False' for the given axes ('all' when there are none)."""
    parts = [f"{a}={fmt_value(row[a])}" for a in axes]
    return ", ".join(parts) or "all"


def with_groups(trials: pd.DataFrame, replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """`trials` plus `group` (key) and `group_label` (the varying axes' values)."""
    t = trials.copy()
    t["group"] = group_keys(t, replicate)
    axes = varying_axes(t, replicate)
    t["group_label"] = [label(r, axes) for _, r in t[axes].iterrows()] if axes else "all"
    return t


def main_point(shape: str, method: str = "subspace") -> str:
    """The point a trial is judged by: the trained model for standard training, the ensemble of the
    endpoints for separately trained nets (their midpoint is the barrier, not a model), else the centre."""
    if method == "independent":
        return "ensemble_endpoints"
    return "point" if shape == "point" else "center"


def caption(trials: pd.DataFrame, what: str = "") -> str:
    """'sweep quickstart · 6 trials · 2 seeds' for the trials a figure or table summarises."""
    sweeps = sorted(trials["sweep"].unique()) if len(trials) else []
    name = ", ".join(s or "(unnamed)" for s in sweeps) or "(none)"
    seeds = trials["seed"].nunique() if "seed" in trials else 0
    text = f"sweep {name} · {len(trials)} trial{'s' * (len(trials) != 1)} · {seeds} seed{'s' * (seeds != 1)}"
    return f"{what} — {text}" if what else text


def trials_of(trials: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The trials that the rows (any table with identity columns) come from."""
    return trials.merge(rows[ID].drop_duplicates(), on=ID, how="inner")


class View(Results):
    """A Results restricted to some trials (e.g. one sweep): same attributes, filtered rows."""

    def __init__(self, results: Results, trials: pd.DataFrame):
        super().__init__(results.root)
        self.base = results
        self._trials = trials.reset_index(drop=True)

    @property
    def trials(self) -> pd.DataFrame:
        return self._trials

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        if name == "trials":
            return self.trials
        df = self.base.table(name, columns) if columns is not None else getattr(self.base, name)
        return df.merge(self._trials[ID], on=ID, how="inner")


def select(results: Any, sweep: str | None = None, completed: bool = True, **axes: Any) -> View:
    """The trials of one sweep (and/or with given config values), e.g. `select(r, "quickstart", shape="line")`."""
    results = as_results(results)
    t = results.trials
    if completed and len(t):
        t = t[t["status"] == "completed"]
    if sweep is not None:
        t = t[t["sweep"] == sweep]
    for k, v in axes.items():
        t = t[t[k].isin(v if isinstance(v, (list, tuple, set)) else [v])]
    return View(results, t)
