"""Which trials belong together, what each is judged by, and what it is called.

A *group* is the set of trials of one sweep whose configs differ only in the replicate fields (`seed` by
default): its members are the seeds that mean ± std and deep ensembles run over. Grouping uses the
trial's `config_json`, so every config field (including ones added later) separates groups.

A group has two names, built only from the axes that vary in the sweep:
- its *series*: what was trained, in the papers' words ("Standard", "Line (layer-wise)", "SWA (cyclic LR)",
  "Ensemble of 2 independent", "Standard + dropout 0.1"), from the method fields (METHOD_AXES). Figures draw
  one series per method, in the same colour in every figure;
- its *setting*: the other varying axes ("label_noise=0.2, batchnorm=False"); figures draw one panel per
  setting.

The *main point* of a trial (the evals/predictions point it is judged by) is the trials table's
`main_point`, written by the trainer's method; results written before that column existed fall back to
`main_point(shape, method)`. Every table and figure takes it from `main_points` (one rule).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from analysis.load import ID, Results, load
from trainers.config import FIELDS, METHOD_FIELDS

REPLICATE = ("seed",)
# Fields that do not change the numbers (not in the trial key) never separate groups.
NOT_AXES = {"data_dir", "download", "device", "checkpoint_every", "corruption_dir"}
# Order in which varying axes are listed (then any other field, alphabetically).
AXIS_ORDER = ("method", "shape", "endpoints", "layerwise", "batchnorm", "label_noise", "model", "dataset")
# Fields that say what is trained (and which samples are drawn around it): they name a group's series.
SAMPLER_FIELDS = tuple(f for f in FIELDS if f.startswith("sampler"))
METHOD_AXES = ("method", "shape", "endpoints", "layerwise", "beta", "dropout", "label_smoothing", "early_stop",
               "early_stop_metric", *SAMPLER_FIELDS, *(f for fs in METHOD_FIELDS.values() for f in fs))
# Fields a series name spells out; other method fields are added as `field=value` where they vary.
NAMED = ("method", "shape", "endpoints", "layerwise", "dropout", "label_smoothing", "swa_cycle", "mimo_heads")


def as_results(results: Any) -> Any:
    """A Results (or View) from a path or a Results-like object."""
    return load(str(results)) if isinstance(results, (str, bytes)) or hasattr(results, "__fspath__") else results


def config_fields(trials: pd.DataFrame) -> list[str]:
    """Config columns present in `trials` (one per TrialConfig field)."""
    return [f for f in FIELDS if f in trials.columns and f != "extra"]


# -- what a trial is judged by ---------------------------------------------------------------------------
def main_point(shape: str, method: str = "subspace") -> str:
    """The rule for results written before trials recorded `main_point`: the trained model for standard
    training, the ensemble of the endpoints for separately trained nets (their midpoint is the barrier,
    not a model), else the centre."""
    if method == "independent":
        return "ensemble_endpoints"
    return "point" if shape == "point" else "center"


def _recorded(trials: pd.DataFrame, column: str, fallback: list[str]) -> pd.Series:
    fb = pd.Series(fallback, index=trials.index, dtype=object)
    if column not in trials:
        return fb
    col = trials[column]
    return col.where(col.notna(), fb).astype(object)


def main_points(trials: pd.DataFrame) -> pd.Series:
    """The point each trial is judged by (one per row of `trials`, or of any table with shape and method
    columns and, when recorded, main_point)."""
    methods = trials["method"] if "method" in trials else ["subspace"] * len(trials)
    fallback = [main_point(s, m) for s, m in zip(trials["shape"], methods, strict=True)]
    return _recorded(trials, "main_point", fallback)


def main_ensembles(trials: pd.DataFrame) -> pd.Series:
    """The trainer's own ensemble of each trial ("" when it has none)."""
    fallback = ["" if s == "point" else "ensemble_endpoints" for s in trials["shape"]]
    return _recorded(trials, "main_ensemble", fallback)


# -- groups and their names ------------------------------------------------------------------------------
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
    out: set[str] = set()
    for _, t in trials.groupby("sweep", sort=False):
        n = t[cols].nunique(dropna=False)
        out |= set(n.index[n > 1])
    rank = {a: i for i, a in enumerate(AXIS_ORDER)}
    return sorted(out, key=lambda a: (rank.get(a, len(rank)), a))


def setting_axes(trials: pd.DataFrame, replicate: Iterable[str] = REPLICATE) -> list[str]:
    """The varying axes that are not method fields: a figure draws one panel per combination of them."""
    return [a for a in varying_axes(trials, replicate) if a not in METHOD_AXES]


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v) if v != "" else "none"


def label(row: pd.Series | Mapping[str, Any], axes: Iterable[str]) -> str:
    """'shape=line, batchnorm=False' for the given axes ('all' when there are none)."""
    parts = [f"{a}={fmt_value(row[a])}" for a in axes]
    return ", ".join(parts) or "all"


def method_name(c: Mapping[str, Any]) -> str:
    """What a trial trained, in the papers' words: 'Standard', 'Line (layer-wise)', 'Simplex m=3',
    'SWA (cyclic LR)', 'MIMO M=3', 'Ensemble of 2 independent', '... + dropout 0.1', '... + LS 0.1'."""
    method, shape = c.get("method", "subspace"), c.get("shape", "point")
    m = c.get("endpoints", 2)
    if method == "swa":
        name = "SWA (cyclic LR)" if c.get("swa_cycle") else "SWA (high const. LR)"
    elif method == "mimo":
        name = f"MIMO M={c.get('mimo_heads')}"
    elif method == "independent":
        name = f"Ensemble of {m} independent"
    elif method == "subspace":
        name = {"point": "Standard", "line": "Line", "curve": "Curve"}.get(shape, f"Simplex m={m}")
    else:
        name = f"{method} {shape}"
    if c.get("layerwise") and shape != "point":
        name += " (layer-wise)"
    if c.get("dropout"):
        name += f" + dropout {fmt_value(c['dropout'])}"
    if c.get("label_smoothing"):
        name += f" + LS {fmt_value(c['label_smoothing'])}"
    return name


def _method_rank(c: Mapping[str, Any]) -> tuple:
    """Where a series goes in tables and legends: standard training and its baselines first, then lines,
    curves, simplexes by m, SWA, ensembles of independent nets, MIMO, anything else."""
    method, shape = c.get("method", "subspace"), c.get("shape", "point")
    family = {"swa": 5, "independent": 6, "mimo": 7}.get(method, 8 if method != "subspace" else
                                                           {"point": 0, "line": 1, "curve": 2}.get(shape, 3))
    return (family, c.get("endpoints") or 0, bool(c.get("layerwise")), c.get("swa_cycle") or 0,
            c.get("dropout") or 0.0, c.get("label_smoothing") or 0.0)


def barrier_centres(trials: pd.DataFrame) -> pd.Series:
    """True for trials whose centre is the barrier between separately trained networks, not a network:
    they have endpoints (shape is not a point) but are not judged by their centre (`independent`). Their
    centre, and what the trainer validates there (per-epoch predictions, the early-stopping point), are
    never used as a model."""
    return (trials["shape"] != "point") & (main_points(trials) != "center")


def _records(trials: pd.DataFrame, fields: Iterable[str]) -> list[dict[str, Any]]:
    """The rows as dicts of just these fields (converting every column of a wide table is slow)."""
    return trials[[f for f in dict.fromkeys(fields) if f in trials]].to_dict("records")


def _relevant(row: Mapping[str, Any], field: str) -> bool:
    """Whether a method field means anything for this trial (another method's fields keep their defaults;
    the samplers' settings matter only with samplers, the early-stopping metric only with early stopping)."""
    if field in SAMPLER_FIELDS and field != "samplers":
        return bool(row.get("samplers"))
    if field == "early_stop_metric":
        return bool(row.get("early_stop"))
    return not any(field in fs and m != row.get("method") for m, fs in METHOD_FIELDS.items())


def series_names(trials: pd.DataFrame) -> pd.Series:
    """The series of each trial: its method name, plus `field=value` for the method fields that the name
    does not spell out and that take several values among trials of that name."""
    if trials.empty:
        return pd.Series([], dtype=object, index=trials.index)
    extra = [a for a in varying_axes(trials) if a in METHOD_AXES and a not in NAMED]
    rows = _records(trials, [*NAMED, "samplers", "early_stop", *extra])
    base = pd.Series([method_name(r) for r in rows], index=trials.index)
    shown = {a: pd.Series([fmt_value(r[a]) if _relevant(r, a) else None for r in rows], index=trials.index)
             for a in extra}
    # the names under which a field takes several values: only there does it tell series apart
    varies = {a: set(v.groupby(base).nunique().loc[lambda n: n > 1].index) for a, v in shown.items()}
    out = []
    for i, b in enumerate(base):
        parts = [b] + [f"{a}={shown[a].iat[i]}" for a in extra if b in varies[a] and pd.notna(shown[a].iat[i])]
        out.append(", ".join(parts))
    return pd.Series(out, index=trials.index)


def with_groups(trials: pd.DataFrame, replicate: Iterable[str] = REPLICATE) -> pd.DataFrame:
    """`trials` plus `group` (key), `series` (what was trained) and `series_order` (its place in tables and
    legends), `setting` (the other varying axes), `group_label` (both, naming only what varies) and the
    resolved `main_point` / `main_ensemble`."""
    t = trials.copy()
    t["group"] = group_keys(t, replicate)
    t["main_point"] = main_points(t)
    t["main_ensemble"] = main_ensembles(t)
    t["series"] = series_names(t)
    ranks = [(_method_rank(r), n) for r, n in zip(_records(t, NAMED), t["series"], strict=True)]
    order = {k: i for i, k in enumerate(sorted(set(ranks)))}
    t["series_order"] = [order[k] for k in ranks]
    settings = setting_axes(t, replicate) if len(t) else []
    t["setting"] = [label(r, settings) for r in t[settings].to_dict("records")] if settings else "all"
    several = t["series"].nunique() > 1
    t["group_label"] = [" · ".join(p for p in ((s if several else ""), (f if f != "all" else "")) if p) or "all"
                        for s, f in zip(t["series"], t["setting"], strict=True)]
    return t


def untrained(trials: pd.DataFrame) -> pd.Series:
    """Which trials completed at chance (trials.at_chance; null in results written before the column)."""
    flag = trials["at_chance"].eq(True) if "at_chance" in trials else pd.Series(False, index=trials.index)
    return trials["status"].eq("completed") & flag


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
        self.folder = results.folder  # one list of skipped files
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
