"""Every method as a sweep axis, end to end: real local Ray, MLflow (SQLite) and Parquet, then `basin analyze`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY, write_sweep
from mlflow.tracking import MlflowClient

from analysis import build_report, load
from orchestrator.runner import run_sweep
from orchestrator.sweep import load_sweep

pytestmark = pytest.mark.timeout(600)

METHODS = """\
axes:
  baseline:
    - {method: subspace, shape: point}
    - {method: subspace, shape: line}
    - {method: independent, shape: line}
    - {method: swa, shape: point, swa_start: 2}
    - {method: swa, shape: point, swa_start: 2, swa_cycle: 2}
    - {method: mimo, shape: point}
  seed: [0, 1]
"""


def test_every_method_runs_as_a_sweep_and_reaches_parquet_mlflow_and_the_report(ray_local, tmp_path):
    base = {**TINY, "epochs": 4, "ensemble_samples": 2, "early_stop": True, "samplers": "random,pca",
            "sampler_checkpoints": 3, "sampler_rank": 2}
    path = write_sweep(tmp_path, f"name: methods\nbase: {json.dumps(base)}\nresults: {tmp_path / 'results'}\n"
                                 + METHODS)
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=5)
    assert summary.ok and summary.total == 12

    r = load(sweep.dir)
    assert len(r.trials) == 12 and (r.trials.status == "completed").all()
    assert r.trials.groupby("method").size().to_dict() == {"independent": 2, "mimo": 2, "subspace": 4, "swa": 4}
    test = r.evals[r.evals.split == "test"].merge(r.trials[["trial_key", "method", "main_point"]], on="trial_key")
    # every trial has a row at its main point, an early-stopping row and its samplers' ensembles
    assert (test.point == test.main_point).groupby(test.trial_key).any().all()
    for point in ("early_stop", "ensemble_random", "ensemble_pca"):
        assert test[test.point == point].trial_key.nunique() == 12, point
    assert set(test[test.method == "swa"].point) >= {"swa", "ensemble_snapshots"}
    assert set(test[test.method == "mimo"].point) >= {"member_0", "member_2", "ensemble_members"}

    client = MlflowClient(tracking_uri=sweep.mlflow)
    exp = client.get_experiment_by_name("methods")
    runs = client.search_runs([exp.experiment_id], "tags.`basin.role` = 'trial'", max_results=100)
    assert len(runs) == 12 and all(run.info.status == "FINISHED" for run in runs)
    assert {run.data.params["method"] for run in runs} == {"subspace", "independent", "swa", "mimo"}

    reports = build_report(sweep.dir, tmp_path / "report")
    (rep,) = reports
    robustness = pd.read_csv(rep.folder / "tables" / "robustness.csv")
    assert set(robustness["method"]) == {"subspace", "independent", "swa", "mimo"}
    assert (tmp_path / "report" / "index.html").read_text().count("<img") >= 3
