"""Diverging trials: a non-finite training loss stops the trial at that epoch with status `diverged`, keeps
its epochs rows, is not retried, and the sweep goes on and counts it (real Ray, Parquet, MLflow, report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, Keep, write_sweep
from hypothesis import given
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from analysis.load import load, read_arrow
from analysis.trials import select, untrained
from orchestrator.cli import main
from orchestrator.runner import run_sweep
from orchestrator.store import Store
from orchestrator.sweep import load_sweep
from trainers.config import make_config
from trainers.folder import to_arrow
from trainers.metrics import classification_metrics
from trainers.pack import run_pack
from trainers.results import trial_row
from trainers.schema import AT_CHANCE_MARGIN, at_chance, main_test_accuracy
from trainers.train import chance_accuracy

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
    # members build their rows as single trials do: a diverged one is not "at chance", both know chance
    assert bad["at_chance"] is False and isinstance(good["at_chance"], bool)
    assert bad["chance_accuracy"] == good["chance_accuracy"] and 0.09 < good["chance_accuracy"] < 0.12
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
    assert "Diverged or untrained trials (2 diverged, 0 at chance)" in page
    assert "2 diverged trial(s) excluded from every mean" in page
    listed = (Path(summary.report).parent / "blowup" / "tables" / "diverged.csv").read_text()
    assert all(name in listed for name in bad)
    # a re-run has nothing to do: a diverged trial is finished
    again = run_sweep(load_sweep(path), report=False)
    assert again.ran == 0 and again.skipped == 4


# -- trials that finish at chance: a finite loss, but nothing learned ---------------------------------------
# SGD (momentum 0.9) at this rate on digits without BatchNorm: the loss blows up to 1e4..1e25 in epoch 1, the ReLUs
# die, and epoch 2 ends at a finite loss of 3..7 with test accuracy 0.08..0.12 (chance 0.117): 16 of 16 seeds
STUCK_LR = 3.0


@given(chance=st.floats(0.0, 0.99), gain=st.floats(0.0, 1.0))
def test_at_chance_rule(chance: float, gain: float):
    # a constant predictor (accuracy = chance) is at chance, a perfect one never; the flag only goes one way
    assert at_chance(chance, chance) and not at_chance(1.0, chance)
    acc = chance + gain * (1 - chance)  # `gain` of the way from chance to perfect
    if not math.isclose(gain, AT_CHANCE_MARGIN, abs_tol=1e-9):
        assert at_chance(acc, chance) == (gain < AT_CHANCE_MARGIN)
    assert not at_chance(acc, chance) or at_chance(acc * 0.9, chance)


def test_at_chance_on_digits_numbers_and_the_main_points_test_row():
    assert at_chance(0.098, 0.102) and at_chance(0.14, 0.102) and not at_chance(0.16, 0.102)
    assert not at_chance(0.9, 0.102) and at_chance(0.52, 0.5) and not at_chance(0.6, 0.5)
    assert chance_accuracy(torch.tensor([0, 0, 1, 2])) == 0.5 and chance_accuracy(torch.tensor([], dtype=torch.long))\
        is None
    rows = [dict(point="center", split="val", corruption="", accuracy=0.5),
            dict(point="center", split="test", corruption="snow", accuracy=0.2),
            dict(point="endpoint_0", split="test", corruption="", accuracy=0.7),
            dict(point="center", split="test", corruption="", accuracy=0.9)]
    assert main_test_accuracy(rows, "center") == 0.9 and main_test_accuracy(rows, "") is None
    assert main_test_accuracy(rows, "swa") is None


def test_results_written_before_the_at_chance_column_still_read(tmp_path: Path):
    row = trial_row(make_config(TINY).to_dict(), sweep="old", trial_key="k0", attempt=0, name="old trial",
                    status="completed", error="")
    (tmp_path / "trials").mkdir()
    pq.write_table(to_arrow("trials", [row]).drop_columns(["at_chance", "chance_accuracy"]),
                   tmp_path / "trials" / "k0-a0.parquet")
    t = read_arrow(tmp_path, "trials", ["trial_key", "status", "at_chance", "chance_accuracy"]).to_pylist()
    assert t == [dict(trial_key="k0", status="completed", at_chance=None, chance_accuracy=None)]
    trials = load(tmp_path).trials
    assert len(trials) == 1 and not untrained(trials).any()


def test_a_trial_at_chance_is_flagged_kept_in_means_and_shown(ray_local, tmp_path: Path, capsys):
    base = {**TINY, "epochs": 2, "shape": "point", "width": 16, "batchnorm": False}
    path = write_sweep(tmp_path, f"name: stuck\nbase: {json.dumps(base)}\nresults: {tmp_path / 'results'}\n"
                                 f"axes:\n  lr: [0.05, {STUCK_LR}]\n", "stuck.yaml")
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=1, report=True)
    out = capsys.readouterr().out
    bad, good = (next(t for t in sweep.trials if t.config.lr == lr) for lr in (STUCK_LR, 0.05))
    rows = {r["trial_key"]: r for r in read_arrow(sweep.dir, "trials").to_pylist()}
    assert summary.ok and summary.completed == 2 and not summary.diverged and not summary.failed
    assert [(r["status"], r["at_chance"]) for r in (rows[bad.key], rows[good.key])] == \
        [("completed", True), ("completed", False)]
    res = load(sweep.dir)
    chance = rows[bad.key]["chance_accuracy"]
    labels = res.predictions[res.predictions.trial_key == bad.key].iloc[0]["labels"]
    assert chance == pytest.approx(np.bincount(labels).max() / len(labels)) and 0.09 < chance < 0.12
    ev = res.evals[(res.evals.split == "test") & (res.evals.point == "point") & (res.evals.corruption == "")]
    acc = dict(zip(ev.trial_key, ev.accuracy, strict=True))
    assert acc[bad.key] <= chance + 0.05 * (1 - chance) < 0.5 < acc[good.key]
    assert np.isfinite(res.epochs[res.epochs.trial_key == bad.key].train_loss).all()  # not diverged
    assert f"{bad.name}: finished at chance (test accuracy {acc[bad.key]:.3f}, chance {chance:.3f}; finite loss): " \
           "check its learning rate" in out
    assert f"{good.name}: finished at chance" not in out
    assert "2/2 trials completed, 1 of them at chance, 0 failed" in out
    assert f"  at chance: {bad.name}: test accuracy no better than chance ({chance:.3f})" in out
    assert summary.at_chance == {bad.name: chance}
    # MLflow: the live mirror tags it, and sync-mlflow into a fresh store gives the same tags
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    assert main(["sync-mlflow", sweep.dir, "--mlflow", fresh]) == 0
    for uri in (sweep.mlflow, fresh):
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("stuck").experiment_id],
                                  "tags.`basin.role` = 'trial'")
        tags = {r.data.tags["basin.trial_key"]: (r.data.tags.get("basin.status"), r.data.tags.get("basin.at_chance"),
                                                 r.info.status) for r in runs}
        assert tags == {bad.key: ("completed", "true", "FINISHED"), good.key: ("completed", None, "FINISHED")}
    # the report lists it, and it stays in the means (a real result)
    page = Path(summary.report).read_text()
    assert "Diverged or untrained trials (0 diverged, 1 at chance)" in page
    assert "1 trial(s) finished at chance, kept in the means" in page
    listed = (Path(summary.report).parent / "stuck" / "tables" / "diverged.csv").read_text()
    assert bad.name in listed and "at chance" in listed and good.name not in listed
    assert set(select(res, "stuck").trials.trial_key) == {bad.key, good.key}
