"""The results tables as Arrow schemas: one schema for every study (docs/schema.md). Imports no torch."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from trainers.config import FIELDS

# Statuses that end a trial for good: a re-run skips them. `diverged`: its training loss went non-finite at
# trials.diverged_epoch, a result (the epochs rows up to there are kept), not an error to retry.
FINAL_STATUSES = ("completed", "diverged")
ID = [("sweep", pa.string()), ("trial_key", pa.string()), ("attempt", pa.int32())]
_F32_LIST = pa.list_(pa.float32())


def _config_columns() -> list[tuple[str, pa.DataType]]:
    kinds = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    return [(n, kinds.get(type(f.default), pa.string())) for n, f in FIELDS.items() if n != "extra"]


SCHEMAS: dict[str, pa.Schema] = {
    # one row per trial attempt that ended: its config (a column per field), outcome and timings
    "trials": pa.schema(ID + [
        ("name", pa.string()), ("status", pa.string()), ("error", pa.string()),
        ("started_at", pa.float64()), ("finished_at", pa.float64()), ("seconds", pa.float64()),
        ("ran_on", pa.string()), ("n_params", pa.int64()), ("label_noise_actual", pa.float64()),
        ("main_point", pa.string()), ("main_ensemble", pa.string()), ("best_epoch", pa.int32()),
        ("diverged_epoch", pa.int32()), ("at_chance", pa.bool_()), ("chance_accuracy", pa.float64()),
        ("compile_seconds", pa.float64()),
        ("corruption_generator", pa.string()),
        ("extra", pa.string()), ("config_json", pa.string()),
    ] + _config_columns()),
    # one row per epoch: training metrics and validation at the subspace centre
    "epochs": pa.schema(ID + [
        ("epoch", pa.int32()), ("lr", pa.float64()), ("train_loss", pa.float64()), ("train_acc", pa.float64()),
        ("reg", pa.float64()), ("val_acc", pa.float64()), ("val_nll", pa.float64()),
        ("seconds", pa.float64()), ("samples_per_s", pa.float64()),
    ]),
    # one row per evaluated point (or ensemble) and split
    "evals": pa.schema(ID + [
        ("epoch", pa.int32()), ("split", pa.string()), ("point", pa.string()), ("kind", pa.string()),
        ("alpha", pa.float64()), ("coords", _F32_LIST), ("members", pa.int32()), ("member_of", pa.string()),
        ("accuracy", pa.float64()), ("nll", pa.float64()), ("brier", pa.float64()), ("ece", pa.float64()),
        ("corruption", pa.string()), ("severity", pa.int32()), ("colour", pa.string()),
    ]),
    # per evaluated point: test probabilities, flattened row-major (n_examples x n_classes), and labels
    "predictions": pa.schema(ID + [
        ("epoch", pa.int32()), ("split", pa.string()), ("point", pa.string()), ("kind", pa.string()),
        ("member_of", pa.string()), ("n_classes", pa.int32()), ("probs", _F32_LIST),
        ("labels", pa.list_(pa.int32())),
    ]),
    # a fixed random projection of the flattened weights (same projection for every trial of a model)
    "weights": pa.schema(ID + [
        ("epoch", pa.int32()), ("point", pa.string()), ("norm", pa.float64()), ("projection", _F32_LIST),
    ]),
    # one row per probed point and probe (trainers/probes.py): Hessian, Goldilocks measures, stiffness
    "probes": pa.schema(ID + [
        ("epoch", pa.int32()), ("point", pa.string()), ("kind", pa.string()), ("probe", pa.string()),
        ("examples", pa.int32()), ("dim", pa.int64()), ("loss", pa.float64()), ("eigenvalues", pa.list_(pa.float64())),
        ("trace", pa.float64()), ("trace_ratio", pa.float64()), ("positive_fraction", pa.float64()),
        ("n_classes", pa.int32()), ("matrix", _F32_LIST), ("sign_matrix", _F32_LIST), ("within", pa.float64()),
        ("between", pa.float64()), ("distances", _F32_LIST), ("distance_stiffness", _F32_LIST),
        ("seconds", pa.float64()),
    ]),
}
TABLES = tuple(SCHEMAS)


# A trial "at chance" is within this share of the way from chance to perfect accuracy: a network stuck on one
# class or guessing lands a point or two off chance (test-set noise, a second class hit by luck), while one that
# learned anything is far above it (digits: 0.1 against 0.9+).
AT_CHANCE_MARGIN = 0.05


def at_chance(accuracy: float, chance: float) -> bool:
    """Whether a trial learned nothing: its main point's test accuracy is no better than chance plus 5% of the
    way from chance to perfect. `chance` is the share of the most common test class (what a constant predictor
    gets), so a skewed test set raises the bar. A finite loss can hide this (an absurd learning rate that
    pins the network to one class); such a trial is still a result (status completed, kept in means), flagged
    in trials.at_chance so the researcher sees it."""
    return accuracy <= chance + AT_CHANCE_MARGIN * (1.0 - chance)


def main_test_accuracy(evals: list[dict[str, Any]], main: str) -> float | None:
    """The clean test accuracy of the point (or ensemble) named `main` (trials.main_point) among a trial's
    evals rows; None when there is none."""
    return next((r["accuracy"] for r in evals
                 if main and r["point"] == main and r["split"] == "test" and not r.get("corruption")), None)
