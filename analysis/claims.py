"""The claims scorecard: each claim of the four seed papers written once as data (`CLAIMS`), judged on any
results folder whose axes allow it (`scorecard`), as the report's first section, `basin claims RESULTS` and
a table on the sweep's MLflow run.

A claim compares two *series* (trials picked by their config, each measured at one point: the trial's main
point, its own ensemble, the mean of that ensemble's members, or a named point) on one metric, under a
condition (e.g. label_noise 0.2), in a direction: A higher than B, A lower, or A within ± margin of B.

Pairing. A pair is one trial of A and one of B with the same replicate (`seed`; for random masks also
`mpo_mask_seed`) and the same value of every other axis that varies in the sweep (batchnorm, lr, width...);
its difference is d = A − B. Pairs are pooled over those other axes, so a claim gets one verdict per sweep
and the row names them (`over`); `by=[axis]` (`basin claims --by AXIS`) gives one verdict per value of the
axis instead. When a method field varies within a series (a line layer-wise and not, simplexes of m = 3
and m = 4), each variant is its own row: a series is never averaged over what was trained. A method field
that varies within both series (e.g. `early_stop`) is matched like a setting and also splits the rows; a
claim may pool such a field instead (`pool`: the loss-patterns claims pool over the fill probability).

Statistics (`group_stats`, the same call users make): mean, sample std (ddof 1), standard error std/√n, the
95% t interval mean ± t(0.975, n − 1)·sem, and n. Verdict:
- holds: the interval excludes 0 on the claimed side;
- reversed: it excludes 0 on the other side;
- not shown: it includes 0;
- cannot be judged: why (no trials with label_noise 0.2; method swa not in the sweep; one pair: n = 1).
A "close" claim (A within ± margin of B) holds when the whole interval lies inside ± margin, is reversed
when it lies wholly outside it, and is not shown otherwise.

Differences are in the metric's units: fractions for accuracy, ECE and disagreement (shown as percentage
points, pp), nats for NLL.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.load import ID
from analysis.predictions import load_core
from analysis.tables import CLEAN, HIGHER_IS_BETTER, PERCENT, Table, View
from analysis.trials import (
    METHOD_AXES,
    NAMED,
    as_results,
    caption,
    fmt_value,
    main_ensembles,
    main_points,
    method_name,
    select,
    varying_axes,
)
from trainers.config import SAMPLERS

HOLDS, NOT_SHOWN, REVERSED, CANNOT = "holds", "not shown", "reversed", "cannot be judged"
VERDICTS = (HOLDS, NOT_SHOWN, REVERSED, CANNOT)
STATS = ("mean", "std", "sem", "ci_low", "ci_high", "n")


# -- the claims, as data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """Trials picked by config values (`where`: field -> value, or a tuple of values: any of them), measured
    at `point`: "main" (the trial's main point), "main_ensemble" (its own ensemble), "members" (the mean over
    that ensemble's members; for disagreement: their pairwise disagreement), "samplers" (disagreement only:
    Fort et al.'s samples around the solution against the solution) or a point name ("early_stop", "gap")."""

    label: str
    where: Mapping[str, Any]
    point: str = "main"


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    figure: str
    text: str                 # the claim, condition included, as the paper states it
    metric: str               # accuracy, nll, ece, brier; disagreement for the "disagreement" measure
    a: Series
    b: Series
    direction: str            # "higher" (A > B), "lower" (A < B) or "close" (|A − B| < margin)
    measure: str = "test"     # test (clean test set), corrupted (mean over corrupted test sets), barrier, disagreement
    condition: Mapping[str, Any] = field(default_factory=dict)
    margin: float = 0.0
    replicate: tuple[str, ...] = ("seed",)
    pool: tuple[str, ...] = ()


PLAIN = {"dropout": 0.0, "label_smoothing": 0.0}
STANDARD = Series("Standard training", {"method": "subspace", "shape": "point", **PLAIN})
MIDPOINT = Series("Line or simplex midpoint", {"method": "subspace", "shape": ("line", "simplex"), **PLAIN})
LAYERWISE = Series("Layer-wise midpoint", {"method": "subspace", "shape": ("line", "simplex"), "layerwise": True,
                                           **PLAIN})
INDEPENDENT = Series("Ensemble of independent nets", {"method": "independent", **PLAIN})
MIMO = Series("MIMO", {"method": "mimo", **PLAIN})
W21, FORT, MIMO_PAPER, MPO = ("Wortsman et al. 2021 (seed 000)", "Fort, Hu & Lakshminarayanan (seed 001)",
                              "Havasi et al. (seed 002)", "Skorokhodov & Burtsev (seed 003)")
MASKS = {"mpo_pattern": "random"}
MPO_REPLICATE = ("seed", "mpo_mask_seed")

CLAIMS: list[Claim] = [
    Claim("noise-midpoint", W21, "Fig. 7", "label noise 0.2: the midpoint of a line or simplex is more accurate "
          "than standard training", "accuracy", MIDPOINT, STANDARD, "higher", condition={"label_noise": 0.2}),
    Claim("noise-early-stop", W21, "Fig. 7", "label noise 0.2: the layer-wise midpoint is more accurate than "
          "standard training stopped at its best validation epoch", "accuracy", LAYERWISE,
          Series("Standard training (opt. early stop)", STANDARD.where, "early_stop"), "higher",
          condition={"label_noise": 0.2}),
    Claim("noise-swa", W21, "Fig. 7", "label noise 0.2: the layer-wise midpoint is more accurate than SWA",
          "accuracy", LAYERWISE, Series("SWA", {"method": "swa", **PLAIN}), "higher", condition={"label_noise": 0.2}),
    Claim("clean-accuracy", W21, "Fig. 3", "clean labels: the midpoint of a line or curve is more accurate than "
          "standard training", "accuracy",
          Series("Line or curve midpoint", {"method": "subspace", "shape": ("line", "curve"), **PLAIN}), STANDARD,
          "higher", condition={"label_noise": 0.0}),
    Claim("clean-ece", W21, "Fig. 5", "clean labels: the midpoint of a line or simplex is better calibrated "
          "(lower ECE) than standard training", "ece", MIDPOINT, STANDARD, "lower", condition={"label_noise": 0.0}),
    Claim("corruption-accuracy", W21, "Fig. 6", "corrupted test images (mean over corruptions and severities): "
          "the line midpoint is more accurate than standard training", "accuracy",
          Series("Line midpoint", {"method": "subspace", "shape": "line", **PLAIN}), STANDARD, "higher",
          measure="corrupted", condition={"label_noise": 0.0}),
    Claim("barrier", W21, "Fig. 1, 'Training a subspace'", "a trained line has a lower NLL barrier (midpoint NLL "
          "minus its endpoints' mean) than the line between two independently trained nets", "nll",
          Series("Line", {"method": "subspace", "shape": "line", **PLAIN}),
          Series("Two independent nets", {"method": "independent", "shape": "line", **PLAIN}), "lower",
          measure="barrier"),
    Claim("diversity", FORT, "subspace sampling, accuracy vs diversity", "independently trained nets disagree "
          "more with each other than samples around one solution (random, dropout, Gaussian, PCA) disagree "
          "with it", "disagreement", Series("Independent nets", INDEPENDENT.where, "members"),
          Series("Samples around standard training", STANDARD.where, "samplers"), "higher", measure="disagreement"),
    Claim("ensemble-nll", FORT, "ensemble size", "an ensemble of independently trained nets has a lower NLL "
          "than its members", "nll", Series("Independent ensemble", INDEPENDENT.where, "main_ensemble"),
          Series("Its members (mean)", INDEPENDENT.where, "members"), "lower"),
    Claim("ensemble-accuracy", FORT, "ensemble size", "an ensemble of independently trained nets is more "
          "accurate than its members", "accuracy", Series("Independent ensemble", INDEPENDENT.where, "main_ensemble"),
          Series("Its members (mean)", INDEPENDENT.where, "members"), "higher"),
    Claim("mimo-accuracy", MIMO_PAPER, "abstract; CIFAR-10 results", "MIMO's ensemble (one forward pass) is more "
          "accurate than one standard network", "accuracy", MIMO, STANDARD, "higher"),
    Claim("mimo-nll", MIMO_PAPER, "abstract; CIFAR-10 results", "MIMO's ensemble has a lower NLL than one "
          "standard network", "nll", MIMO, STANDARD, "lower"),
    Claim("mimo-vs-ensemble", MIMO_PAPER, "abstract ('for free'); CIFAR-10 results", "MIMO's accuracy is within "
          "1 point of a deep ensemble of independently trained nets", "accuracy", MIMO,
          Series("Deep ensemble", INDEPENDENT.where), "close", margin=0.01),
    Claim("bn-gap", MPO, "Fig. 4(a)", "random masks: with BatchNorm the black − white test accuracy gap is "
          "smaller (patterns are harder to fit: a smoother landscape) than without", "accuracy",
          Series("mpo with BatchNorm", {"method": "mpo", "batchnorm": True}, "gap"),
          Series("mpo without BatchNorm", {"method": "mpo", "batchnorm": False}, "gap"), "lower",
          condition=MASKS, replicate=MPO_REPLICATE, pool=("mpo_fill",)),
    Claim("bn-score", MPO, "Fig. 4(b)", "random masks: models with BatchNorm attain higher test accuracy (on the "
          "black cells, trained to low loss) than without", "accuracy",
          Series("mpo with BatchNorm", {"method": "mpo", "batchnorm": True}, "black"),
          Series("mpo without BatchNorm", {"method": "mpo", "batchnorm": False}, "black"), "higher",
          condition=MASKS, replicate=MPO_REPLICATE, pool=("mpo_fill",)),
]


# -- statistics -------------------------------------------------------------------------------------------------
def group_stats(df: pd.DataFrame, by: str | Sequence[str] = (), value: str | Sequence[str] = "value",
                level: float = 0.95) -> pd.DataFrame:
    """Mean, sample std (ddof 1), standard error, `level` t interval (ci_low, ci_high) and n of `value` per
    `by` group (no `by`: one row), in one call, e.g.
    `group_stats(evals, ["method", "shape"], "accuracy")`. Several values: columns `<value>_<stat>`. With
    n < 2 the std, sem and interval are NaN."""
    by = [by] if isinstance(by, str) else list(by)
    values = [value] if isinstance(value, str) else list(value)
    d = df if by else df.assign(_all=0)
    g = d.groupby(by or ["_all"], dropna=False, sort=True)[values]
    agg = g.agg(["mean", "std", "count"])
    q = 0.5 + level / 2
    out = pd.DataFrame(index=agg.index)
    for v in values:
        n = agg[(v, "count")].astype(int)
        mean, std = agg[(v, "mean")], agg[(v, "std")].where(n >= 2)
        sem = std / np.sqrt(n)
        t = pd.Series(stats.t.ppf(q, np.maximum(n - 1, 1)), index=n.index).where(n >= 2)
        cols = dict(mean=mean, std=std, sem=sem, ci_low=mean - t * sem, ci_high=mean + t * sem, n=n)
        for s in STATS:
            out[s if len(values) == 1 else f"{v}_{s}"] = cols[s]
    out = out.reset_index()
    return out.drop(columns="_all") if not by else out


def verdict(low: float, high: float, direction: str, margin: float = 0.0) -> str:
    """holds / reversed / not shown from an interval of A − B; cannot be judged without one."""
    if pd.isna(low) or pd.isna(high):
        return CANNOT
    if direction == "close":
        if -margin < low and high < margin:
            return HOLDS
        return REVERSED if low > margin or high < -margin else NOT_SHOWN
    if direction == "lower":
        low, high = -high, -low
    return HOLDS if low > 0 else REVERSED if high < 0 else NOT_SHOWN


# -- picking trials ---------------------------------------------------------------------------------------------
def _values(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (tuple, list, set, frozenset)) else [v]


def _matches(col: pd.Series, want: Any) -> pd.Series:
    out = pd.Series(False, index=col.index)
    for v in _values(want):
        if isinstance(v, float):
            out |= pd.Series(np.isclose(pd.to_numeric(col, errors="coerce").astype(float), v), index=col.index)
        else:
            out |= (col == v).fillna(False).astype(bool)
    return out


def _desc(f: str, want: Any) -> str:
    return f"{f} " + " or ".join(fmt_value(v) for v in _values(want))


def describe(condition: Mapping[str, Any]) -> str:
    return ", ".join(_desc(f, v) for f, v in condition.items())


def _pick(everything: pd.DataFrame, t: pd.DataFrame, s: Series, cond: str) -> tuple[pd.DataFrame, str]:
    """The trials of series `s` among `t` (the sweep under the claim's condition), or why there are none."""
    cur, done = t, []
    for f, v in s.where.items():
        if f not in cur:
            return cur.iloc[:0], f"no {f} axis in the results"
        nxt = cur[_matches(cur[f], v)]
        if nxt.empty:
            d = _desc(f, v)
            if not _matches(everything[f], v).any():
                return nxt, f"{d} not in the sweep"
            if not _matches(t[f], v).any():
                return nxt, f"{d} not in the sweep at {cond}"
            return nxt, f"no {s.label} trials: none with {d} among those with {', '.join(done)}"
        cur, done = nxt, [*done, _desc(f, v)]
    return cur, ""


# -- measuring a series ---------------------------------------------------------------------------------------
class _Data:
    """One sweep's final test evaluations (and, when a claim needs them, predictions), read once."""

    def __init__(self, view: Any, probs: Any = None):
        self.view, self._probs, self._evals = view, probs, None

    @property
    def evals(self) -> pd.DataFrame:
        if self._evals is None:
            ev = self.view.evals
            ev = ev[ev["split"] == "test"]
            if len(ev):
                ev = ev[ev["epoch"] == ev.groupby(ID)["epoch"].transform("max")]
            self._evals = ev.assign(corruption=ev["corruption"].fillna(CLEAN), member_of=ev["member_of"].fillna(""))
        return self._evals

    @property
    def probs(self) -> Any:
        if self._probs is None:
            self._probs = load_core(self.view)
        return self._probs


def _targets(trials: pd.DataFrame, point: str) -> pd.DataFrame:
    """ID + `_point` (the evals point) or `_group` (the ensemble whose members count) per trial."""
    t = trials[ID].copy()
    if point == "members":
        return t.assign(_group=main_ensembles(trials).str.replace("ensemble_", "", n=1, regex=False).to_numpy())
    where = {"main": main_points(trials), "main_ensemble": main_ensembles(trials)}.get(point)
    return t.assign(_point=where.to_numpy() if where is not None else point)


def _point_name(s: Series) -> str:
    return {"main": "its main point", "main_ensemble": "its own ensemble",
            "members": "its ensemble's members"}.get(s.point, f"point {s.point}")


def _measure_test(data: _Data, trials: pd.DataFrame, s: Series, metric: str, corrupted: bool = False) \
        -> tuple[pd.DataFrame, str]:
    ev = data.evals
    ev = ev[ev["corruption"] != CLEAN] if corrupted else ev[ev["corruption"] == CLEAN]
    tg = _targets(trials, "main" if corrupted else s.point)
    if "_group" in tg:
        rows = ev.merge(tg, left_on=ID + ["member_of"], right_on=ID + ["_group"])
    else:
        rows = ev.merge(tg, left_on=ID + ["point"], right_on=ID + ["_point"])
    vals = rows.groupby(ID, as_index=False)[metric].mean().rename(columns={metric: "value"}).dropna()
    if vals.empty:
        if corrupted:
            return vals, f"no corrupted test evaluations of {s.label} (set corruptions)"
        hint = " (set early_stop: true)" if s.point == "early_stop" else ""
        return vals, f"no test evaluations of {s.label} at {_point_name(s)}{hint}"
    return vals, ""


def _measure_barrier(data: _Data, trials: pd.DataFrame, s: Series, metric: str) -> tuple[pd.DataFrame, str]:
    """How much worse the midpoint is than the mean of its endpoints (positive: a barrier)."""
    ev = data.evals
    ev = ev[(ev["corruption"] == CLEAN) & (ev["point"].eq("center") | ev["point"].str.startswith("endpoint_"))]
    ev = ev.merge(trials[ID], on=ID)
    ev = ev.assign(_end=ev["point"] != "center")
    w = ev.groupby(ID + ["_end"])[metric].mean().unstack("_end")
    if w.empty or True not in w or False not in w:
        return pd.DataFrame(columns=ID + ["value"]), f"no centre and endpoint evaluations of {s.label}"
    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    vals = (sign * (w[True] - w[False])).rename("value").dropna().reset_index()
    return vals, "" if len(vals) else f"no centre and endpoint evaluations of {s.label}"


def _measure_disagreement(data: _Data, trials: pd.DataFrame, s: Series, metric: str) -> tuple[pd.DataFrame, str]:
    """Fraction of test examples whose predicted classes differ: among the members of the trial's own ensemble
    (pairwise), or between each of Fort et al.'s samples and the trial's main point (point "samplers")."""
    probs = data.probs
    meta = probs.meta[probs.meta["trial_key"].isin(set(trials["trial_key"]))]
    if len(meta):
        meta = meta[meta["epoch"] == meta.groupby(ID)["epoch"].transform("max")]
    out = []
    for key, m in meta.groupby(ID, sort=False):
        if s.point == "members":
            group = str(main_ensembles(m.iloc[:1]).iloc[0]).replace("ensemble_", "", 1)
            rows = m[m["member_of"] == group]
            if len(rows) < 2 or rows["block"].nunique() != 1:
                continue
            pred = probs.arrays(rows)[0].argmax(-1)
            i, j = np.triu_indices(len(pred), 1)
            out.append((*key, float((pred[i] != pred[j]).mean())))
        else:
            ref = m[m["point"] == main_points(m)]
            rows = m[m["member_of"].isin(SAMPLERS)]
            if ref.empty or rows.empty:
                continue
            rows = rows[rows["block"] == ref["block"].iloc[0]]
            pred = probs.arrays(rows)[0].argmax(-1)
            at = probs.arrays(ref.iloc[:1])[0].argmax(-1)
            out.append((*key, float((pred != at).mean())))
    vals = pd.DataFrame(out, columns=ID + ["value"])
    if vals.empty:
        why = f"no saved test predictions of two or more members of {s.label}'s ensemble (save_predictions)" \
            if s.point == "members" else f"no samples around the solutions of {s.label} (set samplers)"
        return vals, why
    return vals, ""


MEASURES = {
    "test": _measure_test,
    "corrupted": lambda data, trials, s, metric: _measure_test(data, trials, s, metric, corrupted=True),
    "barrier": _measure_barrier,
    "disagreement": _measure_disagreement,
}


# -- judging ----------------------------------------------------------------------------------------------------
def _variant_labels(t: pd.DataFrame, s: Series, axes: list[str]) -> pd.Series:
    """The series' label, or, where a method field varies within it, its method name (and the other fields)."""
    if not axes:
        return pd.Series(s.label, index=t.index)
    named = any(a in NAMED for a in axes)
    out = []
    for r in t.to_dict("records"):
        base = method_name(r) if named else s.label
        extra = [f"{a}={fmt_value(r[a])}" for a in axes if a not in NAMED]
        out.append(", ".join([base, *extra]))
    return pd.Series(out, index=t.index)


def _row(claim: Claim, sweep: str, by: Sequence[str], **more: Any) -> dict[str, Any]:
    row = dict(sweep=sweep, claim=claim.id, statement=claim.text, paper=claim.paper, figure=claim.figure,
               a=claim.a.label, b=claim.b.label, metric=claim.metric, measure=claim.measure,
               direction=claim.direction, margin=claim.margin, condition=describe(claim.condition), over="",
               **{a: None for a in by}, n=0, mean=np.nan, std=np.nan, sem=np.nan, ci_low=np.nan, ci_high=np.nan,
               verdict=CANNOT, why="")
    row.update(more)
    return row


def judge(claim: Claim, data: _Data, trials: pd.DataFrame, by: Sequence[str] = (), level: float = 0.95,
          sweep: str = "") -> list[dict[str, Any]]:
    """The rows of one claim on one sweep's completed trials."""
    for s in (claim.a, claim.b):  # what is missing from the whole sweep first: "method swa not in the sweep"
        ts, why = _pick(trials, trials, s, "")
        if why:
            return [_row(claim, sweep, by, why=why)]
    t = trials
    for f, v in claim.condition.items():
        if f not in t:
            return [_row(claim, sweep, by, why=f"no {f} axis in the results")]
        keep = _matches(t[f], v)
        if not keep.any():
            mine = pd.concat([_pick(trials, trials, s, "")[0] for s in (claim.a, claim.b)])
            have = " or ".join(fmt_value(x) for x in sorted(mine[f].dropna().unique()))
            return [_row(claim, sweep, by, why=f"no trials with {_desc(f, v)} (the sweep has {f} {have})")]
        t = t[keep]
    cond = describe(claim.condition)
    sides = []
    for s in (claim.a, claim.b):
        ts, why = _pick(trials, t, s, cond)
        if not why:
            vals, why = MEASURES[claim.measure](data, ts, s, claim.metric)
        if why:
            return [_row(claim, sweep, by, why=why)]
        sides.append((ts, vals))
    replicate = [r for r in claim.replicate if r in t]
    single = {f for f, v in [*claim.condition.items(), *claim.a.where.items(), *claim.b.where.items()]
              if len(_values(v)) == 1}
    named = set(claim.condition) | set(claim.a.where) | set(claim.b.where)
    settings = [x for x in varying_axes(t, claim.replicate)
                if x not in named and (x not in METHOD_AXES or x in claim.pool)]
    var = [[x for x in varying_axes(ts, claim.replicate) if x in METHOD_AXES and x not in single
            and x not in claim.pool and x not in settings] for ts, _ in sides]
    shared = [x for x in var[0] if x in var[1]]
    key = list(dict.fromkeys(["sweep", *replicate, *settings, *shared]))
    split = [a for a in by if a in settings]
    frames = []
    for (ts, vals), axes, side in zip(sides, var, ("a", "b"), strict=True):
        f = ts.assign(_variant=_variant_labels(ts, claim.a if side == "a" else claim.b, axes))
        f = f[list(dict.fromkeys(ID + key + ["_variant"]))].merge(vals, on=ID)
        frames.append(f.groupby(key + ["_variant"], dropna=False, as_index=False)["value"].mean())
    pairs = frames[0].merge(frames[1], on=key, suffixes=("_a", "_b"))
    if pairs.empty:
        same = ", ".join(x for x in key if x not in ("sweep", *replicate))
        return [_row(claim, sweep, by, why=f"no pairs: no {' or '.join(replicate) or 'replicate'} of {claim.a.label} "
                     f"has a {claim.b.label} trial" + (f" with the same {same}" if same else ""))]
    pairs["diff"] = pairs["value_a"] - pairs["value_b"]
    groups = ["_variant_a", "_variant_b", *split]
    st = group_stats(pairs, groups, "diff", level)
    rows = []
    for r in st.to_dict("records"):
        sel = pd.Series(True, index=pairs.index)
        for g in groups:
            sel &= pairs[g] == r[g]
        over = [x for x in settings if x not in split and pairs.loc[sel, x].nunique(dropna=False) > 1]
        n = int(r["n"])
        v = verdict(r["ci_low"], r["ci_high"], claim.direction, claim.margin) if n >= 2 else CANNOT
        why = "" if v != CANNOT else "one pair (n = 1): no interval"
        rows.append(_row(claim, sweep, by, a=r["_variant_a"], b=r["_variant_b"], over=", ".join(over),
                         **{a: r[a] for a in split}, n=n, mean=r["mean"], std=r["std"], sem=r["sem"],
                         ci_low=r["ci_low"], ci_high=r["ci_high"], verdict=v, why=why))
    return rows


COLUMNS = ["sweep", "claim", "statement", "paper", "figure", "a", "b", "metric", "measure", "direction", "margin",
           "condition", "over", "n", "mean", "std", "sem", "ci_low", "ci_high", "verdict", "why"]


def scorecard(results: Any, claims: Iterable[Claim] | None = None, by: Sequence[str] = (), level: float = 0.95,
              sweeps: Sequence[str] | None = None, probs: Any = None) -> pd.DataFrame:
    """One row per claim (per variant of its series, per value of the `by` axes) and sweep: the paired
    differences A − B (n, mean, std, sem, ci_low, ci_high at `level`), the verdict and, when it cannot be
    judged, why. Only completed trials count. `probs`: predictions already loaded (analysis.predictions.load_core
    of a one-sweep view), for the disagreement claims."""
    results = as_results(results)
    claims = CLAIMS if claims is None else list(claims)
    by = list(by)
    everything = results.trials
    names = sorted(everything["sweep"].unique()) if len(everything) else []
    rows: list[dict[str, Any]] = []
    for sweep in names:
        if sweeps and sweep not in sweeps:
            continue
        view = select(results, sweep)
        if view.trials.empty:
            rows += [_row(c, sweep, by, why="no completed trials") for c in claims]
            continue
        data = _Data(view, probs if len(names) == 1 else None)
        for c in claims:
            rows += judge(c, data, view.trials, by, level, sweep)
    cols = [*COLUMNS[:COLUMNS.index("n")], *by, *COLUMNS[COLUMNS.index("n"):]]
    return pd.DataFrame(rows, columns=cols)


# -- showing it ---------------------------------------------------------------------------------------------------
def _scaled(metric: str) -> tuple[float, str, int]:
    return (100.0, " pp", 2) if metric in PERCENT | {"disagreement"} else (1.0, "", 4)


def fmt_difference(row: Mapping[str, Any]) -> str:
    """'+2.31 pp [+0.45, +4.17]' (accuracy, ECE, disagreement: percentage points); '' when not judged."""
    if pd.isna(row["mean"]):
        return ""
    k, unit, d = _scaled(row["metric"])
    s = f"{row['mean'] * k:+.{d}f}{unit}"
    if not pd.isna(row["ci_low"]):
        s += f" [{row['ci_low'] * k:+.{d}f}, {row['ci_high'] * k:+.{d}f}]"
    return s


def _verdict_text(row: Mapping[str, Any]) -> str:
    return f"{row['verdict']}: {row['why']}" if row["why"] else str(row["verdict"])


def _compared(row: Mapping[str, Any]) -> str:
    close = f" (within ±{fmt_difference(dict(row, mean=row['margin'], ci_low=np.nan))[1:]})" \
        if row["direction"] == "close" else ""
    return f"{row['a']} − {row['b']}{close}"


def cells(card: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """The scorecard as strings: claim, source, compared, n, A − B (CI), verdict (why)."""
    by = [c for c in card.columns if c not in COLUMNS]
    rows = card.to_dict("records")
    out = pd.DataFrame({
        "claim": [r["statement"] + (f" [{', '.join(f'{a}={fmt_value(r[a])}' for a in by)}]" if by else "")
                  + (f" (pooled over {r['over']})" if r["over"] else "") for r in rows],
        "source": [f"{r['paper']}, {r['figure']}" for r in rows],
        "compared": [_compared(r) for r in rows],
        "n": [int(r["n"]) for r in rows],
        f"A − B ({level:.0%} CI)": [fmt_difference(r) for r in rows],
        "verdict": [_verdict_text(r) for r in rows],
    }, index=card.index)
    return out


COLOURS = {HOLDS: ("#d9f2dd", "#14532d"), NOT_SHOWN: ("#fff3cd", "#7a5b00"), REVERSED: ("#f8d7da", "#7f1d1d"),
           CANNOT: ("#eeeeee", "#555555")}


@dataclass
class Scorecard(Table):
    """The scorecard as a report table: verdicts coloured, long text wrapped, always shown open."""

    always_open: bool = True

    def html(self, max_rows: int | None = None) -> str:
        e = html.escape
        c = self.views[0].cells
        verdicts = list(self.data["verdict"])
        head = "".join(f"<th>{e(str(x))}</th>" for x in [c.index.name or "", *c.columns])
        body = []
        for i, (claim, r) in enumerate(zip(c.index, c.itertuples(index=False), strict=True)):
            if max_rows is not None and i >= max_rows:
                break
            bg, fg = COLOURS.get(verdicts[i], ("#fff", "#222"))
            tds = [f"<th style='white-space:normal;max-width:32em'>{e(str(claim))}</th>"]
            for name, v in zip(c.columns, r, strict=True):
                if name == "verdict":
                    tds.append(f"<td style='background:{bg};color:{fg};white-space:normal;text-align:left;"
                               f"min-width:8em'><b>{e(str(v))}</b></td>")
                elif name in ("claim", "source", "compared"):
                    tds.append(f"<td style='white-space:normal;text-align:left;max-width:28em'>{e(str(v))}</td>")
                else:
                    tds.append(f"<td>{e(str(v))}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        more = len(c) - max_rows if max_rows is not None and len(c) > max_rows else 0
        note = f"<p class=cap>… {more} more rows in the CSV</p>" if more else ""
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table>" + note


def counts(card: pd.DataFrame) -> str:
    """'3 hold · 1 not shown · 0 reversed · 11 cannot be judged'."""
    n = card["verdict"].value_counts() if len(card) else pd.Series(dtype=int)
    return " · ".join(f"{int(n.get(v, 0))} {'hold' if v == HOLDS else v}" for v in VERDICTS)


def claims_table(card: pd.DataFrame, used: pd.DataFrame | None = None, level: float = 0.95) -> Scorecard:
    cap = (caption(used) + " · " if used is not None else "") + counts(card) + \
        f" · paired differences A − B over seeds (same other axes), mean [{level:.0%} t interval]; holds: the " \
        "interval excludes 0 on the claimed side, reversed: on the other, not shown: it includes 0"
    return Scorecard("claims", "Claims scorecard: the seed papers' claims on this sweep", cap, card,
                     [View("", cells(card, level).set_index("claim"))])


def section(ctx: Any) -> None:
    """The report's first section (analysis/sections.py; `ctx` is its Context): the scorecard of the sweep."""
    card = scorecard(ctx.view, probs=ctx.probs)
    ctx.table(claims_table(card, ctx.trials))


def format_text(card: pd.DataFrame, level: float = 0.95) -> str:
    """A plain aligned table: verdict, n, A − B [CI], claim id, what is compared, then the claim and its source
    (and why it cannot be judged)."""
    if card.empty:
        return "no claims judged (no completed trials)"
    c = cells(card, level)
    diff = f"A − B ({level:.0%} CI)"
    cols = {"verdict": card["verdict"], "n": card["n"].astype(int).astype(str), diff: c[diff], "id": card["claim"],
            "compared": c["compared"]}
    width = {k: max(len(k), *(len(str(x)) for x in v)) for k, v in cols.items()}

    def line(values: Mapping[str, str], rest: str) -> str:
        return "  ".join(str(values[k]).rjust(width[k]) if k == "n" else str(values[k]).ljust(width[k])
                         for k in cols) + "  " + rest

    lines: list[str] = []
    several = card["sweep"].nunique() > 1
    for sweep, idx in card.groupby("sweep", sort=False).groups.items():
        if several:
            lines += [""] * bool(lines) + [f"sweep {sweep or '(unnamed)'}: {counts(card.loc[idx])}"]
        lines.append(line({k: k for k in cols}, "claim (source)"))
        for i in idx:
            r = card.loc[i]
            lines.append(line({k: v.loc[i] for k, v in cols.items()}, f"{c.at[i, 'claim']} ({c.at[i, 'source']})"
                              + (f": {r['why']}" if r["why"] else "")))
    if not several:
        lines.append(counts(card))
    return "\n".join(lines)
