"""A sweep on several nodes, on loopback: a head and two workers with one fake GPU each, trials asking for
half a GPU. The trials spread over both workers; one worker is removed mid-sweep and its trials finish on
the other from their checkpoints; every trial's rows are in Parquet exactly once and each trial has one
MLflow run. The driver is orchestrator.runner.run_sweep, as `basin run --address` uses it."""

from __future__ import annotations

import glob
import json
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, TINY, assert_resumed, end_group, wait_mid_sweep, write_sweep

EPOCHS = 30
SWEEP = f"""\
name: multinode
base: {{epochs: {EPOCHS}, width: 8, batch_size: 16, shape: line, batchnorm: false, save_predictions: false,
       alpha_grid: 3, ensemble_samples: 2, device: cpu, extra: {{basin_hold_until: HOLD}}}}
axes:
  seed: [0, 1, 2, 3]
resources: {{cpus: 1, gpus: 0.5}}
retries: 3
"""


def loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node and driver on 127.0.0.1, with this test's own auth token."""
    import ray._private.ray_constants as ray_constants
    from ray._raylet import AuthenticationTokenLoader

    # Ray rewrites a 127.0.0.1 address to the machine's outward IP before connecting; this is its switch
    # (read at import, hence the attribute too) for keeping every node and the driver on loopback.
    monkeypatch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    # This cluster's own token; Ray caches the token per process, so reload it here and after the test.
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    AuthenticationTokenLoader.instance().reset_cache()


def head(num_cpus: int = 1) -> Any:
    from ray.cluster_utils import Cluster

    return Cluster(initialize_head=True, head_node_args={"num_cpus": num_cpus, "num_gpus": 0,
                                                          "node_ip_address": "127.0.0.1", "include_dashboard": False})


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Head (no GPU) + two workers (2 CPUs, 1 fake GPU each), all on 127.0.0.1, with token auth; this
    process is the driver. Cluster.shutdown ends exactly the processes it started."""
    import ray
    from ray._raylet import AuthenticationTokenLoader

    loopback(tmp_path, monkeypatch)
    assert not ray.is_initialized()
    c = head()
    workers = [c.add_node(num_cpus=2, num_gpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        monkeypatch.undo()
        AuthenticationTokenLoader.instance().reset_cache()


def parent_pid(pid: int) -> int | None:
    """The parent of a live process (a Ray worker's parent is the raylet of its node); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.mark.timeout(400)
def test_trials_spread_and_survive_a_lost_worker(cluster, tmp_path):
    import mlflow

    from analysis.load import read_arrow
    from orchestrator.runner import run_sweep
    from orchestrator.store import Store
    from orchestrator.sweep import load_sweep

    c, (node_a, node_b) = cluster
    raylets = {n.all_processes["raylet"][0].process.pid: n.node_id for n in (node_a, node_b)}
    go = tmp_path / "go"  # every trial's first attempt holds after its first checkpoint until this file exists
    (tmp_path / "sweep.yaml").write_text(SWEEP.replace("HOLD", json.dumps(str(go))))
    sweep = load_sweep(tmp_path / "sweep.yaml", results=str(tmp_path / "results"))
    keys = [t.key for t in sweep.trials]
    store = Store(sweep.dir)
    removed: dict[str, object] = {}
    seen: dict[int, str] = {}          # trial process pid -> node id, sampled while the processes live
    finished = threading.Event()

    def watch() -> None:
        """Note on which node each attempt's process runs (its parent is that node's raylet); once all four
        trials run (two per worker: 1 GPU / 0.5 each) and each holds at its first checkpoint, remove worker B,
        then let the trials go on."""
        deadline = time.monotonic() + 300
        while not finished.is_set() and time.monotonic() < deadline:
            for k in keys:
                for a in store.attempts(k):
                    if a["pid"] not in seen and parent_pid(a["pid"]) in raylets:
                        seen[a["pid"]] = raylets[parent_pid(a["pid"])]
            if "at" not in removed and len(seen) == len(keys) and \
                    all(store.exists(f"checkpoints/{k}.pt") for k in keys):
                removed.update(on_b=[pid for pid, node in seen.items() if node == node_b.node_id],
                               at=time.monotonic())
                c.remove_node(node_b)
                go.write_text("")
            time.sleep(0.5)
        go.write_text("")  # never left holding: the sweep ends and the assertions say what went wrong

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = run_sweep(sweep, address=c.address, every=60, report=False)
    finally:
        finished.set()
        watcher.join(timeout=30)
    assert "at" in removed, "worker B was never removed mid-sweep (the four trials never all held?)"
    assert summary.ok and summary.completed == 4, summary

    # Where each attempt ran: its marker names the trial process, whose parent raylet names the node.
    where = seen
    attempts = {k: store.attempts(k) for k in keys}
    first_nodes = {where.get(a[0]["pid"]) for a in attempts.values()}
    assert first_nodes == {node_a.node_id, node_b.node_id}, (attempts, where)  # both workers

    moved = [k for k, a in attempts.items() if a[0]["pid"] in removed["on_b"]]
    assert len(moved) == 2, attempts                                        # B's two trials were cut off
    for k in moved:
        last = attempts[k][-1]
        assert len(attempts[k]) >= 2 and where.get(last["pid"]) == node_a.node_id
        assert last["resumed_from_epoch"] > 0 and last["checkpoint"] in ("tune", "results")  # not from scratch
    for k in set(keys) - set(moved):
        assert len(attempts[k]) == 1                                        # A's trials ran once

    # Parquet: each trial exactly once (raw files, before analysis.load's de-duplication).
    trials = read_arrow(sweep.dir, "trials").to_pylist()
    completed = Counter(r["trial_key"] for r in trials if r["status"] == "completed")
    assert completed == Counter(keys)
    epochs = read_arrow(sweep.dir, "epochs", ["trial_key", "attempt", "epoch"]).to_pylist()
    assert Counter(r["trial_key"] for r in epochs) == {k: EPOCHS for k in keys}
    assert all(sorted(r["epoch"] for r in epochs if r["trial_key"] == k) == list(range(1, EPOCHS + 1))
               for k in keys)

    # MLflow: one run per trial, the resumed ones included.
    client = mlflow.MlflowClient(tracking_uri=sweep.mlflow)
    exp = client.get_experiment_by_name(sweep.name)
    runs = client.search_runs([exp.experiment_id], "tags.`basin.role` = 'trial'", max_results=100)
    assert Counter(r.data.tags["basin.trial_key"] for r in runs) == Counter(keys)
    steps = {r.data.tags["basin.trial_key"]: sorted(m.step for m in client.get_metric_history(r.info.run_id,
                                                                                              "epoch/train_loss"))
             for r in runs}
    assert all(len(set(s)) == len(s) for s in steps.values())             # no epoch logged twice
    for k in set(keys) - set(moved):
        assert steps[k] == list(range(1, EPOCHS + 1))

    assert json.loads(store.read_bytes(sorted(Path(sweep.dir, "runs").iterdir())[-1].relative_to(sweep.dir)
                                       .as_posix()))["completed"] == 4

    # every moved trial's run has every epoch too: epochs whose Tune report died with the worker are
    # filled in from the finished trial's final report
    for k in moved:
        assert steps[k] == list(range(1, EPOCHS + 1)), (k, steps[k], attempts[k])


@pytest.mark.timeout(400)
def test_head_restart_resumes_the_sweep(tmp_path, monkeypatch):
    """The head node is lost mid-sweep (a spot instance reclaimed): its GCS, raylet and the trial running on it
    end, and the driver (`basin run --address`, as a cluster job runs it) exits. A new head comes up and the
    same command against it resumes: finished trials do not run again, the interrupted one continues from
    its checkpoint in the results folder, every trial is in Parquet exactly once, and MLflow (healed) holds
    one complete run per trial."""
    from ray._raylet import AuthenticationTokenLoader

    from orchestrator.store import Store
    from orchestrator.sweep import load_sweep

    loopback(tmp_path, monkeypatch)
    # A driver notices a lost head when its reconnection window ends (Ray's default: 60 s).
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "5")
    path = write_sweep(tmp_path, f"name: headless\nbase: {json.dumps({**TINY, 'shape': 'line', 'epochs': 25})}\n"
                                 f"results: {tmp_path / 'results'}\naxes:\n  seed: [0, 1, 2, 3, 4]\n"
                                 "max_concurrent: 1\n")
    sweep = load_sweep(path)
    folder, keys = sweep.dir, [t.key for t in sweep.trials]

    def basin_run(address: str, log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--address", address,
                                     "--every", "1", "--no-report"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    first = head(num_cpus=2)
    proc = basin_run(first.address, tmp_path / "first.log")
    try:
        wait_mid_sweep(folder, proc, tmp_path / "first.log")
        trial_procs = [p for p in psutil.Process(first.head_node.all_processes["raylet"][0].process.pid)
                       .children(recursive=True)]
        first.remove_node(first.head_node)  # GCS, raylet and the rest of the head, by their pids
        rc = proc.wait(120)
        _, alive = psutil.wait_procs(trial_procs, timeout=60)
        assert not alive, [p.name() for p in alive]
    finally:
        end_group(proc, grace=0)
        first.shutdown()
    log = (tmp_path / "first.log").read_text()
    assert rc != 0, log
    done = {Path(p).name.split("-")[0] for p in glob.glob(f"{folder}/trials/*.parquet")}
    store = Store(folder)
    markers = {k: store.attempts(k) for k in keys}
    interrupted = [k for k in keys if markers[k] and k not in done]
    assert 2 <= len(done) < 5 and len(interrupted) == 1, (done, markers)

    second = head(num_cpus=2)
    try:
        proc = basin_run(second.address, tmp_path / "second.log")
        assert proc.wait(240) == 0, (tmp_path / "second.log").read_text()
        log = (tmp_path / "second.log").read_text()
        assert re.search(r"\[headless\] the run of [-0-9: ]+ \(pid \d+, on this machine\) ended without recording "
                         "its end: its driver was killed, or lost with its Ray cluster; its unfinished trials go on "
                         "from their checkpoints\n", log), log
        assert f"[headless] 5 trials: {len(done)} completed earlier, {5 - len(done)} to run" in log
    finally:
        end_group(proc, grace=0)
        second.shutdown()
        monkeypatch.undo()
        AuthenticationTokenLoader.instance().reset_cache()
    assert_resumed(sweep, markers, done, epochs=25)
