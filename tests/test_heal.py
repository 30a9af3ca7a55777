"""MLflow healed from Parquet (orchestrator/sync.py) and errors that name their cause, on a real local Ray,
real `mlflow server`s on 127.0.0.1 and real SQLite stores: a sweep whose tracking server was down the whole
time is filled in by `basin sync-mlflow` once it is up; a fresh store is rebuilt; a second sync changes
nothing; runs left RUNNING, short of epochs, without test metrics, duplicated or missing are completed; a
SIGKILLed trial worker's retry line says which worker died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY, assert_mirror_matches_parquet, end_group, free_port, runs_by_key, wait_http, write_sweep
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.runner import run_sweep
from orchestrator.store import Store
from orchestrator.sweep import load_sweep

pytestmark = pytest.mark.timeout(300)


def sweep_file(tmp_path: Path, name: str, body: str, base: dict | None = None) -> Path:
    base = {**TINY, **(base or {})}
    return write_sweep(tmp_path, f"name: {name}\nbase: {json.dumps(base)}\nresults: {tmp_path / 'results'}\n"
                                 + body, f"{name}.yaml")


def snapshot(uri: str, experiment: str) -> list[tuple]:
    """Everything a sync could change: every run (parent too), its status, times, params, tags and the full
    history of each metric."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    out = []
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        hist = {k: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(r.info.run_id, k))
                for k in r.data.metrics}
        out.append((r.info.run_id, r.info.status, r.info.start_time, r.info.end_time, r.data.params,
                    r.data.tags, hist))
    return sorted(out, key=lambda x: x[0])


def parent_status(uri: str, experiment: str) -> str:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], "tags.`basin.role` = 'sweep'")
    return run.info.status


def start_server(folder: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    wait_http(f"http://127.0.0.1:{port}/health", 90, proc)
    return proc


def test_server_down_for_the_whole_sweep_then_sync_fills_it_and_a_fresh_store(ray_local, tmp_path, capsys):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"  # nothing listens there during the sweep
    path = sweep_file(tmp_path, "outage", f"mlflow: {uri}\naxes:\n  shape: [point, line]\n  seed: [0, 1]\n")
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=1, report=False)
    assert summary.ok and summary.completed == 4
    assert uri in summary.mlflow_gap and "sync-mlflow" in capsys.readouterr().out
    # `basin status` says there is a gap, and how to fill it
    assert main(["status", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "finished*" in out and f"basin sync-mlflow {sweep.dir}" in out and "MLflow mirror incomplete" in out

    server_dir = tmp_path / "server"
    server_dir.mkdir()
    proc = start_server(server_dir, port)
    try:
        assert main(["sync-mlflow", sweep.dir]) == 0
        assert "4 runs created, 0 completed" in capsys.readouterr().out
        assert_mirror_matches_parquet(uri, sweep)
        assert parent_status(uri, sweep.name) == "FINISHED"
        assert main(["status", str(tmp_path / "results"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["mlflow_gap"] == ""
        before = snapshot(uri, sweep.name)
        assert main(["sync-mlflow", sweep.dir]) == 0  # a second sync changes nothing
        assert "holds every run already (4 runs)" in capsys.readouterr().out
        assert snapshot(uri, sweep.name) == before
    finally:
        end_group(proc)

    # Into a fresh, empty store: everything rebuilt; then damaged runs are completed, and nothing else moves.
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    assert main(["sync-mlflow", sweep.dir, "--mlflow", fresh]) == 0
    assert_mirror_matches_parquet(fresh, sweep)
    before = snapshot(fresh, sweep.name)
    assert main(["sync-mlflow", sweep.dir, "--mlflow", fresh]) == 0
    assert snapshot(fresh, sweep.name) == before

    client = MlflowClient(tracking_uri=fresh)
    runs = {k: v[0] for k, v in runs_by_key(fresh, sweep.name).items()}
    keys = [t.key for t in sweep.trials]
    client.update_run(runs[keys[0]].info.run_id, status="RUNNING")          # left RUNNING by a killed driver
    client.delete_run(runs[keys[1]].info.run_id)                             # never created
    old = runs[keys[2]]  # replaced by a run short of epochs, without test metrics or params
    partial = client.create_run(old.info.experiment_id, run_name=old.info.run_name, start_time=old.info.start_time,
                                tags={**{k: v for k, v in old.data.tags.items()
                                         if k.startswith(("basin.", "mlflow.parentRunId"))},
                                      "basin.epochs_logged": "1", "basin.status": ""})
    first = min(client.get_metric_history(old.info.run_id, "epoch/train_loss"), key=lambda m: m.step)
    client.log_batch(partial.info.run_id, metrics=[Metric("epoch/train_loss", first.value, 0, first.step)])
    client.delete_run(runs[keys[2]].info.run_id)
    dup = client.create_run(runs[keys[3]].info.experiment_id, run_name="dup", tags={   # a second run of a trial
        "mlflow.parentRunId": runs[keys[3]].data.tags["mlflow.parentRunId"], "basin.role": "trial",
        "basin.trial_key": keys[3]}, start_time=runs[keys[3]].info.start_time + 1)
    capsys.readouterr()
    assert main(["sync-mlflow", sweep.dir, "--mlflow", fresh]) == 0
    assert "1 runs created, 2 completed, 1 duplicate runs deleted" in capsys.readouterr().out
    assert client.get_run(dup.info.run_id).info.lifecycle_stage == "deleted"
    assert_mirror_matches_parquet(fresh, sweep)  # one run per trial, each complete, and equal to Parquet
    assert runs_by_key(fresh, sweep.name)[keys[2]][0].info.run_id == partial.info.run_id  # completed, not replaced


def test_killed_worker_retry_line_names_the_cause(ray_local, tmp_path, capsys):
    """A trial's worker process is SIGKILLed (its pid from the attempt marker the trial writes): the retry
    line and the MLflow tag say which worker died (ActorDiedError), and the trial completes from its
    checkpoint."""
    path = sweep_file(tmp_path, "workerkill", "axes:\n  seed: [0]\nretries: 1\n", {"shape": "line", "epochs": 60})
    sweep = load_sweep(path)
    (trial,) = sweep.trials
    store = Store(sweep.dir)
    killed: list[int] = []

    def kill_worker() -> None:
        deadline = time.monotonic() + 120
        marker = Path(store.path(f"attempts/{trial.key}.a0.json"))
        ckpt = Path(store.path(f"checkpoints/{trial.key}.pt"))
        while time.monotonic() < deadline and not (marker.exists() and ckpt.exists()):  # files stay: no race
            time.sleep(0.02)
        pid = json.loads(marker.read_text())["pid"]
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_worker, daemon=True)
    killer.start()
    summary = run_sweep(sweep, every=1, report=False)
    killer.join(5)
    assert killed and summary.ok and not summary.failed
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "failed (" in ln)
    assert f"failed (ActorDiedError: the trial's worker process (pid {killed[0]}" in line and " died: " in line, line
    assert "retrying from its last checkpoint" in line and "unknown error" not in out
    assert store.attempts(trial.key)[1]["resumed_from_epoch"] >= 1
    (run,) = runs_by_key(sweep.mlflow, sweep.name)[trial.key]
    assert run.data.tags["basin.last_error"].startswith("ActorDiedError: the trial's worker process (pid ")
    assert_mirror_matches_parquet(sweep.mlflow, sweep)
