"""Diverging trials: a non-finite training loss stops the trial at that epoch with status `diverged`, keeps
its epochs rows, is not retried, and the sweep goes on and counts it (real Ray, Parquet, MLflow, report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, Keep, write_sweep
from mlflow.tracking import MlflowClient

from analysis.load import load, read_arrow
from orchestrator.runner import run_sweep
from orchestrator.store import Store
from orchestrator.sweep import load_sweep
from trainers.config import make_config
from trainers.metrics import classification_metrics
from trainers.pack import run_pack

pytestmark = pytest.mark.timeout(300)


def test_metrics_on_non_finite_probabilities_are_nan_not_an_error():
    labels = torch.tensor([0, 1, 2, 0])
    for bad in (float("nan"), float("inf")):
        probs = torch.full((4, 3), 1 / 3)
        probs[1, 2] = bad
        m = classification_metrics(probs, labels)
        assert math.isnan(m["ece"]) and set(m) == {"accuracy", "nll", "brier", "ece"}
    ok = classification_metrics(torch.eye(3)[labels], labels)
    assert ok["accuracy"] == 1.0 and ok["ece"] == pytest.approx(0.0)


def test_a_diverging_pack_member_is_marked_and_the_others_go_on():
    torch.set_num_threads(1)
    cfgs = [make_config({**TINY, "shape": "point", "epochs": 3, "seed": s}) for s in (0, 1)]
    first = [Keep(), Keep()]
    run_pack(cfgs, first)
    # resume both from epoch 1, member 0 from a state whose weights are NaN (a checkpoint of a blown-up run)
    resumes = [first[0].states[1], first[1].states[1]]
    resumes[0] = {**resumes[0], "model": {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                                          for k, v in resumes[0]["model"].items()}}
    sinks = [Keep(), Keep()]
    out = run_pack(cfgs, sinks, resumes)
    bad, good = (o["trials"][0] for o in out)
    assert (bad["status"], bad["diverged_epoch"]) == ("diverged", 2)
    assert [e["epoch"] for e in out[0]["epochs"]] == [1, 2] and math.isnan(out[0]["epochs"][-1]["train_loss"])
    assert out[0]["evals"] == [] and sinks[0].rows is out[0]
    assert good["status"] == "completed" and good["diverged_epoch"] is None
    assert [e["epoch"] for e in out[1]["epochs"]] == [1, 2, 3] and len(out[1]["evals"]) > 0
    # the healthy member's numbers are those of the run that never stopped
    assert out[1]["epochs"][-1]["train_loss"] == pytest.approx(first[1].rows["epochs"][-1]["train_loss"], rel=1e-5)


def test_a_diverging_trial_is_a_result_not_retried_and_the_sweep_goes_on(ray_local, tmp_path: Path, capsys):
    base = {**TINY, "epochs": 3, "shape": "point"}
    path = write_sweep(tmp_path, f"name: blowup\nbase: {json.dumps(base)}\nresults: {tmp_path / 'results'}\n"
                                 "axes:\n  lr: [0.05, 1000.0]\n  seed: [0, 1]\nretries: 2\n", "blowup.yaml")
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=1, report=True)
    out = capsys.readouterr().out
    bad = {t.name: t.key for t in sweep.trials if t.config.lr == 1000.0}
    assert summary.ok and summary.completed == 2 and summary.diverged == {n: 1 for n in bad} and not summary.failed
    rows = read_arrow(sweep.dir, "trials", ["trial_key", "attempt", "status", "diverged_epoch", "error"]).to_pylist()
    assert len(rows) == 4 and {r["attempt"] for r in rows} == {0}  # one attempt each: nothing retried
    for r in rows:
        diverged = r["trial_key"] in bad.values()
        assert (r["status"], r["diverged_epoch"]) == (("diverged", 1) if diverged else ("completed", None))
        assert r["error"] == ("non-finite training loss at epoch 1" if diverged else "")
    store = Store(sweep.dir)
    assert all(len(store.attempts(k)) == 1 for k in bad.values())
    res = load(sweep.dir)
    ep = res.epochs[res.epochs.trial_key.isin(bad.values())]
    assert len(ep) == 2 and ep.epoch.tolist() == [1, 1] and ep.train_loss.isna().all()  # the row is kept
    assert set(res.evals.trial_key) == set(res.trials.trial_key) - set(bad.values())
    for name in bad:
        assert f"{name}: diverged at epoch 1 (non-finite training loss)" in out
        assert f"  diverged: {name}: non-finite training loss at epoch 1" in out
    assert "2/4 trials completed, 2 diverged, 0 failed" in out and "retrying" not in out
    client = MlflowClient(sweep.mlflow)
    runs = client.search_runs([client.get_experiment_by_name("blowup").experiment_id],
                              "tags.`basin.role` = 'trial'")
    tags = {r.data.tags["basin.trial_key"]: (r.data.tags.get("basin.status"), r.info.status) for r in runs}
    assert tags == {k: ("diverged" if k in bad.values() else "completed", "FINISHED") for k in tags} and len(tags) == 4
    # the report lists them and leaves them out of the means, saying so
    page = Path(summary.report).read_text()
    assert "Diverged trials (2)" in page and "2 diverged trial(s) excluded from every mean" in page
    listed = (Path(summary.report).parent / "blowup" / "tables" / "diverged.csv").read_text()
    assert all(name in listed for name in bad)
    # a re-run has nothing to do: a diverged trial is finished
    again = run_sweep(load_sweep(path), report=False)
    assert again.ran == 0 and again.skipped == 4
