"""One MLflow run per seed group (orchestrator/sync.py heal_groups), against a real SQLite MLflow store filled
from a synthetic results folder (tests/synthetic_results.py) through the Parquet healing path, no Ray: every
group of a 200-group sweep has a run, nested under the sweep's run, whose mean, std and n of each headline
metric equal a pandas groupby over the trials' final metrics; the sweep's run no longer carries a summary per
group; the seed groups' view opens on that table; a second heal changes nothing; the report's one-file
version embeds every figure."""

from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from synthetic_results import write_study

from analysis.load import load
from orchestrator.sweep import load_sweep
from orchestrator.sync import heal, heal_groups, sweep_mirror
from orchestrator.tracking import FINAL_STEP, headline_names, n_name, std_name

pytestmark = pytest.mark.timeout(600)
BASE = {"epochs": 4, "alpha_grid": 5, "simplex_grid": 2, "ensemble_samples": 3, "early_stop": True,
        "epoch_predictions": True, "weight_projection": 8}
AXES = ["label_noise", "batchnorm", "lr"]


def synthetic_sweep(tmp_path: Path, noise: list[float], variant: str = "dropout_1", base: dict | None = None):
    """A sweep file over label_noise x batchnorm x lr x 2 seeds and its results written by write_study."""
    from synthetic_results import VARIANTS

    base = {**BASE, **VARIANTS[variant], **(base or {})}
    path = tmp_path / "synth.yaml"
    path.write_text(f"name: synth\nbase: {json.dumps(base)}\naxes:\n  label_noise: {noise}\n"
                    f"  batchnorm: [true, false]\n  lr: [0.05, 0.1]\n  seed: [0, 1]\n"
                    f"results: {tmp_path / 'results'}\nmlflow: sqlite:///{tmp_path}/mlflow.db\n")
    sweep = load_sweep(str(path))
    write_study(Path(sweep.dir), "synth", variants=(variant,), label_noise=noise)
    return sweep


def expected(sweep) -> pd.DataFrame:
    """mean, std, n of each headline metric per seed group, by pandas from the Parquet results."""
    r = load(sweep.dir)
    t = r.trials[r.trials.status == "completed"]
    ev = r.evals[(r.evals.split == "test") & (r.evals.corruption.fillna("") == "")]
    rows = []
    for which, col in (("main/test_", "main_point"), ("main/ensemble_test_", "main_ensemble")):
        m = t[["trial_key", col, *AXES]].merge(ev, left_on=["trial_key", col], right_on=["trial_key", "point"])
        for metric in ("accuracy", "nll", "ece", "brier"):
            g = m.groupby(AXES)[metric].agg(["mean", "std", "count"]).reset_index()
            g["name"] = which + metric
            rows.append(g)
    return pd.concat(rows).fillna({"std": 0.0})


def group_runs(uri: str, name: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.`basin.role` = 'group'", max_results=1000)


def assert_groups_match_pandas(sweep, runs: list) -> None:
    want = expected(sweep)
    assert len(runs) == len({t.group for t in sweep.trials}) == len(want[["label_noise", "batchnorm", "lr"]]
                                                                     .drop_duplicates())
    by_axes = {(float(r.data.params["label_noise"]), r.data.params["batchnorm"] == "True",
                float(r.data.params["lr"])): r for r in runs}
    assert len(by_axes) == len(runs)
    for row in want.itertuples():
        run = by_axes[(row.label_noise, row.batchnorm, row.lr)]
        got = run.data.metrics
        assert got[row.name] == pytest.approx(row.mean, rel=1e-4), (run.info.run_name, row.name)  # 5 digits
        assert got[std_name(row.name)] == pytest.approx(row.std, rel=1e-4)
        assert got[n_name(row.name)] == row.count == 2
    for run in runs:
        assert "seed" not in run.data.params and run.info.status == "FINISHED"
        assert run.info.run_name == run.data.tags["basin.group"] and "seed=" not in run.info.run_name


def test_two_hundred_groups_have_one_run_each_equal_to_a_pandas_groupby(tmp_path):
    noise = [round(i / 100, 2) for i in range(50)]  # x batchnorm x lr = 200 groups, 400 trials
    sweep = synthetic_sweep(tmp_path, noise)
    mirror = sweep_mirror(sweep, sweep.mlflow, live=False)
    mirror.open()  # the experiment and the sweep's run, as heal opens them
    client = mirror._client
    assert heal_groups(sweep, client, mirror.experiment_id, mirror.parent_id) == 200
    runs = group_runs(sweep.mlflow, sweep.name)
    assert_groups_match_pandas(sweep, runs)
    for run in runs:  # nested under the sweep's run; every value once, at step 0 (bars in the chart view)
        assert run.data.tags["mlflow.parentRunId"] == mirror.parent_id
        for key in ("main/test_accuracy", "main_std/test_accuracy", "main_n/test_accuracy"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [FINAL_STEP]
    # nothing changed: no call, no new history
    assert heal_groups(sweep, client, mirror.experiment_id, mirror.parent_id) == 0
    assert len(client.get_metric_history(runs[0].info.run_id, "main/test_accuracy")) == 1


def test_heal_makes_trials_and_groups_and_the_sweep_run_has_no_per_group_summary(tmp_path):
    sweep = synthetic_sweep(tmp_path, [0.0, 0.2], variant="line", base={"shape": "line"})  # 8 groups, 16 trials
    healed = heal(sweep, sweep.mlflow, say=lambda m: None)
    assert not healed.error and healed.created == 16 and healed.groups == 8
    runs = group_runs(sweep.mlflow, sweep.name)
    assert_groups_match_pandas(sweep, runs)
    assert {f"{m}" for m in headline_names()} <= set(runs[0].data.metrics)  # the line's ensemble too
    client = MlflowClient(tracking_uri=sweep.mlflow)
    exp = client.get_experiment_by_name(sweep.name)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`basin.role` = 'sweep'")
    assert not any(k.startswith("group/") for k in parent.data.metrics)
    assert parent.data.metrics["sweep/groups"] == 8 and parent.data.metrics["sweep/completed"] == 16
    # a trial's final values are at step 0, its α profile indexed with the α values beside it
    trial = client.search_runs([exp.experiment_id], "tags.`basin.role` = 'trial'", max_results=1)[0]
    rid = trial.info.run_id
    assert [m.step for m in client.get_metric_history(rid, "main/test_accuracy")] == [0]
    alpha = sorted((m.step, m.value) for m in client.get_metric_history(rid, "landscape/alpha_index/alpha"))
    assert alpha == [(i, a) for i, a in enumerate([0.0, 0.25, 0.5, 0.75, 1.0])]
    assert len(client.get_metric_history(rid, "landscape/alpha_index/test_accuracy")) == 5
    assert not any(k.startswith("landscape/sample") for k in trial.data.metrics)
    assert "test/sample_0/accuracy" in trial.data.metrics  # a random sample is a point of its own
    # a second heal changes nothing, group runs included
    again = heal(sweep, sweep.mlflow, say=lambda m: None)
    assert not again.changed and again.complete == 16

    # the seed groups' view: filtered on the group runs, best mean first, each metric with its ± std column
    from orchestrator.ui import VIEW, experiment_tags

    tag = json.loads(experiment_tags(sweep)[f"mlflow.sharedViewState.{VIEW}"])
    view = json.loads(zlib.decompress(base64.b64decode(tag["state"][len("deflate;"):])))
    assert view["searchFilter"] == "tags.`basin.role` = 'group'" and "groupBy" not in view
    assert view["orderByKey"] == "metrics.`main/test_accuracy`" and view["orderByAsc"] is False
    cols = view["selectedColumns"]
    assert cols[:3] == ["params.`label_noise`", "params.`batchnorm`", "params.`lr`"]
    i = cols.index("metrics.`main/test_accuracy`")
    assert cols[i + 1] == "metrics.`main_std/test_accuracy`" and "metrics.`main_n/test_accuracy`" in cols
    # its chart view: the means first, as bars (one per group), main/test_accuracy on top; std and n folded
    charts = [c for c in view["compareRunCharts"] if not c["deleted"]]
    assert charts[0]["metricKey"] == "main/test_accuracy" and {c["type"] for c in charts} == {"BAR"}
    sections = {s["uuid"]: s for s in view["compareRunSections"]}
    assert [s["name"] for s in view["compareRunSections"]] == ["main", "main_std", "main_n"]
    assert [s["display"] for s in view["compareRunSections"]] == [True, False, False]
    assert all(sections[c["metricSectionId"]]["name"] == c["metricKey"].split("/")[0] for c in charts)


def test_the_one_file_report_embeds_every_figure(tmp_path):
    from analysis.report import build_report
    from orchestrator.analyze import embedded_html

    sweep = synthetic_sweep(tmp_path, [0.0, 0.2], variant="line", base={"shape": "line"})
    (rep,) = build_report(sweep.dir, str(tmp_path / "report"), sweeps=[sweep.name])
    figures = sorted(rep.folder.rglob("*.png"))
    assert len(figures) >= 3
    page = embedded_html(rep.folder)
    images = re.findall(r"<img[^>]*src='([^']*)'", page)
    assert images and all(s.startswith("data:image/png;base64,") for s in images)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in images}
    shown = re.findall(r"<img[^>]*src='([^']*)'", (rep.folder / "index.html").read_text())
    assert len(images) == len(shown)
    assert {f.read_bytes() for f in figures if str(f.relative_to(rep.folder)) in shown} == embedded
    assert {str(f.relative_to(rep.folder)) for f in figures} == set(shown)  # every figure of the folder
    assert not re.search(r"href='[^']*\.png'", page)
