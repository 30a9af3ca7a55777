"""`basin submit` and `basin logs` against a real Ray head (Jobs API on 127.0.0.1) started here with token
auth on, the way cluster.yaml starts one: the sweep runs as a Ray job, its results land under the head's
BASIN_STORAGE, a resubmission resumes instead of repeating, and a client without the token is refused."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SWEEP = """\
name: submit-check
base: {epochs: 2, width: 4, shape: point, batchnorm: false, save_predictions: false, device: cpu}
axes:
  seed: [0, 1]
resources: {cpus: 1}
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Head:
    address: str
    storage: Path
    env: dict[str, str]    # a client environment that holds the cluster's token


def end_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """End the `ray start --block` we started: SIGTERM to it drains the node and stops what it spawned
    (a SIGTERM to the whole group at once leaves it waiting), then SIGKILL whatever is left of its group.
    The leader is reaped last, so its group id cannot have been reused by then."""
    def exited() -> bool:  # without reaping it (WNOWAIT)
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    if not exited():
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not exited() and time.monotonic() < deadline:
            time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def head():
    # Short temp dir: Ray's unix socket paths live under it and must stay short.
    base = Path(tempfile.mkdtemp(prefix="bsub", dir="/tmp"))
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    storage = base / "storage"
    gcs, dash, client, agent, agent_grpc, metrics, renv = free_ports(7)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "BASIN_STORAGE": str(storage), "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           # keep every Ray address on loopback (Ray otherwise swaps 127.0.0.1 for the machine's outward IP)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(k, None)
    log = (base / "head.log").open("w")  # noqa: SIM115 (open for the head's lifetime)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={renv}",
         "--num-cpus=2", "--num-gpus=0", f"--temp-dir={base / 'ray'}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the Jobs API answers once the dashboard is up
            req = urllib.request.Request(f"{address}/api/version",
                                         headers={"Authorization": f"Bearer {token.read_text()}"})
            try:
                if urllib.request.urlopen(req, timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start:\n{(base / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        client_env = {**env}
        client_env.pop("BASIN_STORAGE")  # the laptop does not know the cluster's storage
        yield Head(address, storage, client_env)
    finally:
        end_group(proc)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def basin(*args: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "basin"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def submitted_job(out: str) -> str:
    m = re.search(r"^job:\s+(\S+)", out, re.M)
    assert m, out
    return m.group(1)


def test_submit_runs_the_sweep_as_a_job_and_resubmitting_resumes(head, tmp_path):
    from analysis.load import load

    work = tmp_path / "study"
    (work / "sweeps").mkdir(parents=True)
    (work / "sweeps" / "check.yaml").write_text(SWEEP)

    sub = basin("submit", "sweeps/check.yaml", "--address", head.address, env=head.env, cwd=work)
    assert sub.returncode == 0, sub.stderr
    job = submitted_job(sub.stdout)
    assert job.startswith("basin-submit-check-")
    assert "results: $BASIN_STORAGE/results/submit-check" in sub.stdout   # resolved on the head
    assert re.search(r"^mlflow:\s+\S", sub.stdout, re.M)

    logs = basin("logs", job, "--address", head.address, env=head.env, cwd=work)
    assert logs.returncode == 0, logs.stdout[-3000:] + logs.stderr[-2000:]
    assert "SUCCEEDED" in logs.stderr
    assert "2 trials: 0 completed earlier, 2 to run" in logs.stdout
    assert "2/2 trials completed" in logs.stdout

    results = head.storage / "results" / "submit-check"       # the head's BASIN_STORAGE, not the job's cwd
    r = load(str(results))
    assert sorted(r.trials["seed"]) == [0, 1] and set(r.trials["status"]) == {"completed"}
    assert len(r.epochs) == 4
    first = sorted(p.name for p in (results / "trials").glob("*.parquet"))

    # Submitting the same sweep again (say after the head restarted) resumes it: nothing runs twice.
    again = basin("submit", "sweeps/check.yaml", "--address", head.address, "--follow", env=head.env, cwd=work)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert submitted_job(again.stdout) != job
    assert "2 completed earlier, 0 to run" in again.stdout
    assert sorted(p.name for p in (results / "trials").glob("*.parquet")) == first

    listed = basin("logs", job, "--address", head.address, "--no-follow", env=head.env, cwd=work)
    assert listed.returncode == 0 and "2/2 trials completed" in listed.stdout
    status = basin("status", "--job", job, "--address", head.address, env=head.env, cwd=work)
    assert status.returncode == 0, status.stderr
    assert f"job {job}: SUCCEEDED" in status.stdout and "sweep submit-check" in status.stdout
    assert "2/2 trials completed" in status.stdout  # the driver's last progress line


def test_a_client_without_the_token_is_refused(head, tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP)
    home = tmp_path / "home"
    home.mkdir()
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    for env, says in (({**head.env, "RAY_AUTH_TOKEN_PATH": str(wrong)}, "refused this machine's token"),  # another's
                      ({**{k: v for k, v in head.env.items() if k != "RAY_AUTH_TOKEN_PATH"}, "HOME": str(home)},
                       "needs its token and none was found")):                                           # none
        for cmd in (["submit", "s.yaml"], ["logs", "basin-x-1"]):
            out = basin(*cmd, "--address", head.address, env=env, cwd=tmp_path, timeout=60)
            assert out.returncode == 2, out.stdout + out.stderr
            assert says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_submit_checks_before_sending(head, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SWEEP.replace("seed: [0, 1]", "shape: [line, cube]"))
    out = basin("submit", "bad.yaml", "--address", head.address, env=head.env, cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "axes.shape[1]" in out.stderr

    (tmp_path / "s.yaml").write_text(SWEEP)
    out = basin("submit", "s.yaml", "--address", head.address, "--results", "results", env=head.env, cwd=tmp_path,
                timeout=60)
    assert out.returncode == 2 and "storage every node reaches" in out.stderr

    (tmp_path / "code").mkdir()
    out = basin("submit", "s.yaml", "--address", head.address, "--working-dir", "code", env=head.env,
                cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "inside the working directory" in out.stderr

    out = basin("submit", "s.yaml", "--address", head.address, "--set", "epoch=2", env=head.env, cwd=tmp_path,
                timeout=60)
    assert out.returncode == 2 and "--set epoch: unknown trial field (did you mean 'epochs'?)" in out.stderr


def test_a_submit_where_no_cluster_answers_is_one_line(tmp_path):
    """No cluster at the address, or a web server that is not Ray's dashboard: one line each, no traceback."""
    (tmp_path / "s.yaml").write_text(SWEEP)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x" * 64}
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    for cmd in (["submit", "s.yaml"], ["logs", "basin-x-1"]):
        out = basin(*cmd, "--address", closed, env=env, cwd=tmp_path, timeout=60)
        assert out.returncode == 2 and "cannot reach the Ray dashboard" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr

    port = free_ports(1)[0]
    web = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "Serving HTTP" in web.stdout.readline()  # printed once it listens
        out = basin("submit", "s.yaml", "--address", f"http://127.0.0.1:{port}", env=env, cwd=tmp_path, timeout=60)
    finally:
        web.terminate()
        web.wait(10)
    assert out.returncode == 2 and "not a Ray dashboard" in out.stderr, out.stderr


def test_set_travels_with_the_job(tmp_path):
    """`basin submit --set` is checked here and forced on the head's run: part of the entrypoint."""
    from orchestrator.submit import plan

    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP)
    p = plan(str(sweep), str(tmp_path), "s3://b/r", None, env={}, overrides=["epochs=1", "width=8"])
    assert " --set epochs=1 --set width=8 " in p["entrypoint"]
    assert {t.config.epochs for t in p["sweep"].trials} == {1}


def test_where_a_submitted_sweep_writes(tmp_path):
    """The entrypoint the head runs: results on shared storage only, MLflow from the head unless named."""
    from orchestrator.cli import UserError
    from orchestrator.submit import plan

    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP)
    p = plan(str(sweep), str(tmp_path), None, None, env={})
    assert '--results "${BASIN_STORAGE:?' in p["entrypoint"] and "--address auto" in p["entrypoint"]
    assert '${MLFLOW_TRACKING_URI:+--mlflow "$MLFLOW_TRACKING_URI"}' in p["entrypoint"]
    p = plan(str(sweep), str(tmp_path), None, None, env={"BASIN_STORAGE": "s3://b/basin"})
    assert "--results s3://b/basin/results " in p["entrypoint"] and p["results"] == "s3://b/basin/results/submit-check"
    p = plan(str(sweep), str(tmp_path), "s3://other/r", "http://10.0.0.5:5000", env={"BASIN_STORAGE": "s3://b/basin"})
    assert p["entrypoint"].endswith("--results s3://other/r --mlflow http://10.0.0.5:5000")
    sweep.write_text(SWEEP + "results: /nfs/lab/results\nmlflow: false\n")
    p = plan(str(sweep), str(tmp_path), None, None, env={})
    assert "--results /nfs/lab/results" in p["entrypoint"] and "MLFLOW" not in p["entrypoint"]
    sweep.write_text(SWEEP + "mlflow: sqlite:///mlflow.db\n")
    with pytest.raises(UserError, match="temporary folder on the head"):
        plan(str(sweep), str(tmp_path), "s3://b/r", None, env={})
