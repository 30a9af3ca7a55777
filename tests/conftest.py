"""Shared fixtures: one real local Ray per test session and a real `mlflow server`, both bound to
127.0.0.1, both ended by this session only (ray.shutdown of our own Ray; killpg of the server's own
process group) — never `ray stop` or a kill by name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
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
