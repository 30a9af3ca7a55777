"""The MLflow mirror against real MLflow (SQLite and `mlflow server` on 127.0.0.1): batching, one child run
per trial across mirrors (a resumed sweep continues its runs), tolerance of an unreachable server, and
`basin ui` serving a sweep's store."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from conftest import ROOT, end_group, free_port, read_line
from mlflow.tracking import MlflowClient

from orchestrator.tracking import ALPHA_KEY, MAX_METRICS, Mirror, eval_metrics, headline_names
from trainers.config import TrialConfig

CONFIG = TrialConfig(shape="line", seed=3).to_dict()


def children(uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("basin.role") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("basin.role") == "trial"]
    return parents, kids


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


@pytest.fixture(params=["sqlite", "server"])
def uri(request, tmp_path):
    if request.param == "server":
        return request.getfixturevalue("mlflow_server")
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_batches_and_one_child_run_per_trial_across_mirrors(uri, tmp_path):
    exp = f"mirror-{tmp_path.name}"
    wide = {f"m{i}": float(i) for i in range(MAX_METRICS * 2 + 500)}  # three log_batch calls
    m = Mirror(uri, exp, sweep_text="name: x\n", artifact_location=f"file://{tmp_path}/art", every=0.1).start()
    m.trial("k1", "shape=line,seed=3", CONFIG, {"sweep": exp})
    for step in (1, 2, 3):
        m.metrics("k1", {"train_loss": 1.0 / step}, step=step, epoch=True)
    m.metrics("k1", wide, step=3)
    m.status("k1", "FAILED")
    assert not m.close(summary={"completed": 0})

    # A second mirror (a resumed sweep) continues the same child run; epochs it logged are not repeated.
    m2 = Mirror(uri, exp, every=0.1).start()
    m2.trial("k1", "shape=line,seed=3", {**CONFIG, "data_dir": "/elsewhere"}, {"sweep": exp})  # params kept
    m2.status("k1", "RUNNING")
    m2.tags("k1", {"basin.attempt": 1})
    for step in (2, 3, 4):
        m2.metrics("k1", {"train_loss": 1.0 / step}, step=step, epoch=True)
    m2.trial("k2", "shape=line,seed=4", CONFIG)
    m2.times("k2", start=1_700_000_000.25, end=1_700_000_003.5)  # the trial's own times, not the mirror's
    m2.status("k1", "FINISHED")
    m2.status("k2", "FINISHED")
    assert not m2.close()

    parents, kids = children(uri, exp)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["basin.trial_key"] for r in kids) == ["k1", "k2"]
    k1 = next(r for r in kids if r.data.tags["basin.trial_key"] == "k1")
    assert k1.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert k1.info.run_name == "shape=line,seed=3" and k1.info.status == "FINISHED"
    assert k1.data.tags["basin.attempt"] == "1" and k1.data.tags["shape"] == "line"
    assert k1.data.params["seed"] == "3" and k1.data.params["data_dir"] == CONFIG["data_dir"]
    assert history(uri, k1.info.run_id, "train_loss") == [(s, 1.0 / s) for s in (1, 2, 3, 4)]
    assert len([k for k in k1.data.metrics if k.startswith("m")]) == len(wide)
    assert k1.data.metrics[f"m{len(wide) - 1}"] == float(len(wide) - 1)
    k2 = next(r for r in kids if r.data.tags["basin.trial_key"] == "k2")
    assert (k2.info.start_time, k2.info.end_time) == (1_700_000_000_250, 1_700_000_003_500)


def test_unreachable_server_is_a_reported_gap_not_a_crash(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    warnings: list[str] = []
    m = Mirror(uri, "gone", every=0.05, warn=warnings.append).start()
    for key in ("a", "b"):
        m.trial(key, key, CONFIG)
        for step in range(1, 6):
            m.metrics(key, {"train_loss": 0.5, "val_acc": 0.9}, step=step, epoch=True)
    gap = m.close(timeout=20)
    assert gap.metrics == 20 and gap.trials == {"a", "b"}
    assert len(warnings) == 1 and uri in warnings[0] and "unreachable" in warnings[0]
    assert uri in gap.describe(uri) and "Parquet results are complete" in gap.describe(uri)


def test_eval_metric_names_final_values_at_step_0_profiles_with_their_coordinate():
    def row(split, point, kind, acc, alpha=None, corruption="", severity=0):
        return dict(split=split, point=point, kind=kind, alpha=alpha, accuracy=acc, nll=1 - acc, brier=0.1,
                    ece=0.02, corruption=corruption, severity=severity)

    rows = [row("test", "center", "center", 0.9), row("test", "ensemble_endpoints", "ensemble", 0.95),
            row("test", "alpha_1.00", "alpha", 0.7, alpha=1.0), row("test", "alpha_0.00", "alpha", 0.6, alpha=0.0),
            row("test", "alpha_0.50", "alpha", 0.9, alpha=0.5), row("val", "alpha_0.00", "alpha", 0.5, alpha=0.0),
            row("test", "center", "center", 0.5, corruption="snow", severity=3),
            row("test", "random_0", "random", 0.8), row("test", "random_1", "random", 0.3)]
    got = eval_metrics(rows, "center", "ensemble_endpoints", step=7)
    by_key: dict[str, list] = {}
    for key, value, step in got:
        by_key.setdefault(key, []).append((step, value))
    # the headline: the same names for every method, from the trial's main point and ensemble, clean data only;
    # final values once at step 0 (MLflow draws them as bars, not as a dot at the last epoch)
    assert by_key["main/test_accuracy"] == [(0, 0.9)] and by_key["main/ensemble_test_accuracy"] == [(0, 0.95)]
    assert set(headline_names()) <= set(by_key)
    # a grid of points is one key per metric, its step the index along the grid (alpha ascending), the key says
    # so, and the coordinate itself is logged at the same steps (MLflow's "X-axis: metric")
    assert by_key["landscape/alpha_index/test_accuracy"] == [(0, 0.6), (1, 0.9), (2, 0.7)]
    assert by_key["landscape/alpha_index/val_nll"] == [(0, 0.5)]
    assert by_key[ALPHA_KEY] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    # other points keep their own names, at step 0
    assert by_key["test/center/accuracy"] == [(0, 0.9)] and by_key["test/center/snow3/accuracy"] == [(0, 0.5)]
    # random samples are never one joined line: each is its own key, once
    assert by_key["test/random_0/accuracy"] == [(0, 0.8)] and by_key["test/random_1/accuracy"] == [(0, 0.3)]
    assert not any(k.startswith("landscape/random") or k.startswith("landscape/sample") for k in by_key)
    assert not any("alpha_0" in k for k in by_key)
    assert len(got) == 8 + 4 * 5 + 4 * 4 + 3  # headline, five single rows, four grid rows, three α values
    assert all(step == 0 for key, _, step in got if not key.startswith("landscape/"))
    # a trial without an ensemble has no ensemble headline
    assert not any(k.startswith("main/ensemble") for k, _, _ in eval_metrics(rows[:1], "center", ""))


def test_basin_ui_serves_the_sweeps_store(tmp_path):
    folder = tmp_path / "results" / "uisweep"
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text("name: uisweep\n")
    uri = f"sqlite:///{folder}/mlflow.db"
    m = Mirror(uri, "uisweep", every=0.1).start()
    m.trial("k", "trial", CONFIG)
    m.metrics("k", {"train_loss": 0.25}, step=1, epoch=True)
    assert not m.close()

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", str(folder), "--port", str(port),
                             "--no-browser"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        line, _ = read_line(proc, "MLflow UI for", 120)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=uisweep"
        with urllib.request.urlopen(url, timeout=10) as r:
            exp = json.load(r)["experiment"]
    finally:
        end_group(proc)
    assert exp["name"] == "uisweep"
    # the URL opens the experiment's runs in the machine-learning view (a store without basin's views: the
    # default view key still names the runs page)
    assert f"http://127.0.0.1:{port}/#/experiments/{exp['experiment_id']}/runs?" in line
    assert "workflowType=machine_learning" in line


def test_basin_ui_without_a_store_is_one_line(tmp_path, capsys):
    from orchestrator.cli import main

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.yaml").write_text("name: s\nmlflow: false\n")
    assert main(["ui", str(tmp_path / "s")]) == 2
    assert "no MLflow store" in capsys.readouterr().err
