"""Shared fixtures: one real local Ray per test session and a real `mlflow server`, both bound to
127.0.0.1, both ended by this session only (ray.shutdown of our own Ray; killpg of the server's own
process group) — never `ray stop` or a kill by name."""

from __future__ import annotations

import glob
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

# Before Ray is imported anywhere: the same auth mode basin sets (Ray reads it at import).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

ROOT = Path(__file__).resolve().parents[1]
# Tiny digits trials: a couple of epochs, small evaluation grids.
TINY = dict(dataset="digits", model="mlp", width=4, epochs=2, warmup_epochs=0, alpha_grid=3, simplex_grid=2,
            ensemble_samples=0, checkpoint_every=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_sweep(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def end_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End a process we started in its own session, with everything it spawned."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_mid_sweep(folder: str, proc: subprocess.Popen, log: Path, finished: int = 2) -> None:
    """Wait, on files (they stay once written), until `finished` trials of the `basin run` in `proc` have
    their trials rows and another one has a checkpoint: a sweep cut there has done, cut and untouched trials."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        done = {Path(p).name.split("-")[0] for p in glob.glob(f"{folder}/trials/*.parquet")}
        ckpt = {Path(p).stem for p in glob.glob(f"{folder}/checkpoints/*.pt")}
        if len(done) >= finished and ckpt - done:
            return
        assert proc.poll() is None, log.read_text()
        time.sleep(0.02)
    pytest.fail("the sweep did not get far enough:\n" + log.read_text())


def assert_resumed(sweep, markers: dict[str, list], done: set[str], epochs: int) -> None:
    """A sweep cut mid-way (wait_mid_sweep) and run again: the trials done before (`done`; `markers` their
    attempt markers then) did not run again, the one cut off went on from its checkpoint in the results
    folder, every trial is in Parquet exactly once (raw rows, not analysis.load's de-duplication), and MLflow,
    healed, holds one complete run per trial."""
    from analysis.load import load, read_arrow
    from orchestrator.store import Store

    store = Store(sweep.dir)
    for k in done:
        assert store.attempts(k) == markers[k]
    completed = [r["trial_key"] for r in read_arrow(sweep.dir, "trials", ["trial_key", "status"]).to_pylist()
                 if r["status"] == "completed"]
    assert sorted(completed) == sorted(t.key for t in sweep.trials)
    (key,) = [k for k in markers if markers[k] and k not in done]
    resumed = store.attempts(key)[-1]
    assert resumed["attempt"] == 1 and resumed["checkpoint"] == "results" and resumed["resumed_from_epoch"] >= 1
    ep = load(sweep.dir).epochs
    assert list(ep[ep.trial_key == key].epoch) == list(range(1, epochs + 1))
    assert sorted(len(v) for v in runs_by_key(sweep.mlflow, sweep.name).values()) == [1] * len(sweep.trials)
    assert_mirror_matches_parquet(sweep.mlflow, sweep)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def read_line(proc: subprocess.Popen, contains: str, timeout: float) -> tuple[str, str]:
    """Read a process's text stdout until a line contains `contains`; (that line, everything read). A reader
    thread hands lines over, so waiting is on the process's output, with `timeout` as a bound only."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line is None:
            raise RuntimeError(f"process exited before printing {contains!r}:\n{''.join(seen)}")
        seen.append(line)
        if contains in line:
            return line.strip(), "".join(seen)


class Keep:
    """A sink that keeps every checkpointed state (`states[epoch]`; `state`: the last) and the final rows."""

    def __init__(self):
        self.states, self.rows = {}, None

    @property
    def state(self):
        return self.states[max(self.states)] if self.states else None

    def progress(self, row, state):
        if state is not None:
            self.states[state["epoch"]] = state

    def finish(self, tables):
        self.rows = tables


class Interrupt(Exception):
    pass


def stop_after(root, epoch: int):
    """A sink that saves checkpoints like the default one (trainers.results.FolderSink), then fails the trial
    after `epoch` (raises Interrupt): a trial cut short, to resume from its checkpoint."""
    from trainers.results import FolderSink

    class StopAfter(FolderSink):
        def progress(self, row, state):
            super().progress(row, state)
            if row["epoch"] == epoch:
                raise Interrupt

    return StopAfter(root, trial_key="k")


def runs_by_key(uri: str, experiment: str) -> dict[str, list]:
    """A sweep's MLflow trial runs by trial key (a list: a healthy sweep has one each)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], "tags.`basin.role` = 'trial'", max_results=1000):
        out.setdefault(r.data.tags["basin.trial_key"], []).append(r)
    return out


def assert_mirror_matches_parquet(uri: str, sweep) -> None:
    """One child run per trial; a completed trial's is FINISHED, spans the trial's own times, and its epoch
    curves, headline metrics, profiles and other evaluations equal the Parquet rows."""
    from mlflow.tracking import MlflowClient

    from analysis.load import load
    from orchestrator.store import Store
    from orchestrator.tracking import PROFILE_KINDS, headline_metrics, profile_key

    client = MlflowClient(tracking_uri=uri)
    res = load(sweep.dir)
    exp = client.get_experiment_by_name(sweep.name)
    runs: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], "tags.`basin.role` = 'trial'", max_results=1000):
        runs.setdefault(r.data.tags["basin.trial_key"], []).append(r)
    assert sorted(runs) == sorted(res.trials.trial_key)
    titles = {t.key: t.title for t in sweep.trials}
    for t in res.trials[res.trials.status == "completed"].itertuples():
        (run,) = runs[t.trial_key]
        info, metrics = run.info, run.data.metrics
        assert info.status == "FINISHED" and info.run_name == titles[t.trial_key]
        assert info.start_time == int(Store(sweep.dir).attempts(t.trial_key)[0]["started_at"] * 1000)
        assert info.end_time == int(t.finished_at * 1000)
        ep = res.epochs[res.epochs.trial_key == t.trial_key].sort_values("epoch")
        # set: an attempt resumed from its last checkpoint re-runs (and logs again) the epochs after it, with the
        # same values (a resumed trial gives the same numbers); MLflow keeps both points of such a step
        hist = sorted({(m.step, m.value) for m in client.get_metric_history(info.run_id, "epoch/train_loss")})
        assert hist == list(zip(ep.epoch.astype(int), ep.train_loss, strict=True))
        ev = res.evals[res.evals.trial_key == t.trial_key]
        headline = headline_metrics(ev.to_dict("records"), t.main_point, t.main_ensemble)
        assert "main/test_accuracy" in headline and {k: metrics[k] for k in headline} == headline
        for (kind, split), rows in ev.groupby(["kind", "split"]):
            if kind in PROFILE_KINDS:
                rows = rows.sort_values("alpha") if kind == "alpha" else rows
                key = profile_key(kind, split, "accuracy")
                got = sorted((m.step, m.value) for m in client.get_metric_history(info.run_id, key))
                assert got == list(enumerate(rows.accuracy)), key
            else:
                for row in rows.itertuples():
                    assert metrics[f"{split}/{row.point}/accuracy"] == row.accuracy
                    assert metrics[f"{split}/{row.point}/nll"] == row.nll
        assert run.data.params["seed"] == str(int(t.seed))


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """A module that sets torch's thread count leaves it as it found it: the count picks the CPU kernels, and
    so the rounding, which comparisons of packed and separate trials depend on (tests/test_pack.py)."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray (2 CPUs, no dashboard, bound to 127.0.0.1) started by basin's own start_ray; the
    runner then uses it as it is. Module scope, not session: other modules start Ray themselves with
    their own environment (S3 endpoints, a head node), which needs no Ray running in this process."""
    import ray

    from orchestrator.runner import start_ray

    started = start_ray(None, 2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (SQLite store) in its own process group; yields its URI."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    with open(d / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{d}/mlflow.db",
             "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 90, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        end_group(proc)
