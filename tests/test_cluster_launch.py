"""The cluster path for real: `ray up cluster-local.yaml` over SSH on 127.0.0.1, as a new user would run it,
then `basin submit`, the sweep, MLflow on the head and `ray down`. Slow (the first run installs basin and
its pinned packages, about 5 GB, from the package index into the node's ~/basin-env):

    apt-get install -y openssh-server rsync       # the node's prerequisites, besides Python >= 3.11 and pip
    .venv/bin/python -m pytest -m slow -s tests/test_cluster_launch.py

Everything Ray starts runs as an unprivileged user of the test's own (`basinray`), with its own RAY_TMPDIR, so
the `ray stop` that the start commands and `ray down` run can touch nothing else on this machine; sshd listens
on 127.0.0.1 only, on a free port the user's ~/.ssh/config names. The user's ~/basin-env and pip cache are
kept between runs (a re-run's setup takes seconds); BASIN_FRESH_NODE=1 removes them first.

Head only, and why. A second node on this machine must be another account (the head's `ray stop` ends every
Ray process its account may signal), which works: a second sshd in its own mount namespace, where the cluster's
login name is another account, and Ray's autoscaler v1 sets that node up. But Ray binds its raylet, GCS and
agents to every interface unless the node's address is 127.0.0.1 (`get_localhost_ip() if is_localhost(ip)
else get_all_interfaces_ip()` in ray/dashboard/agent.py), and with the loopback-only switch this test needs
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) `ray start` refuses to start a worker node at all. A network namespace of
the test's own would keep those listeners in, but then the nodes could not reach the package index to set up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
USER = "basinray"
RAY_TMP = f"/tmp/{USER}-ray"       # short: Ray's socket paths must stay under 107 characters
PORTS = {6379: "Ray GCS", 8265: "dashboard / Jobs API", 5000: "MLflow", 52365: "dashboard agent"}
TRIALS = 10
SWEEP = """\
name: launch-check
description: ray up on loopback, submitted as a new user would
base: {width: 16, shape: line, batchnorm: false, save_predictions: false, device: cpu, epochs: 20}
axes:
  label_noise: [0.0, 0.2]
  seed: [0, 1, 2, 3, 4]
resources: {cpus: 1}
"""


def log(msg: str) -> None:
    print(f"[cluster-launch] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def user_processes(uid: int) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["uids"]):
        with contextlib.suppress(psutil.Error):
            if p.info["uids"] and p.info["uids"].real == uid:
                out.append(p)
    return out


class Node:
    """The test's user: runs commands as it, with the environment a researcher's shell would have."""

    def __init__(self, home: Path, bin_dir: Path) -> None:
        pw = pwd.getpwnam(USER)
        self.uid, self.gid, self.home = pw.pw_uid, pw.pw_gid, home
        self.env = {"HOME": str(home), "USER": USER, "LOGNAME": USER, "SHELL": "/bin/bash", "LANG": "C.UTF-8",
                    "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "RAY_TMPDIR": RAY_TMP,
                    "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    def run(self, *cmd: str, timeout: float, check: bool = True, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, cwd=cwd or self.home, env={**self.env, **(env or {})}, user=self.uid,
                              group=self.gid, extra_groups=[], process_group=0, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}\n--- stdout\n{done.stdout[-6000:]}"
                                 f"\n--- stderr\n{done.stderr[-6000:]}")
        return done

    def chown(self, path: Path) -> None:
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.chown(p, self.uid, self.gid, follow_symlinks=False)


def laptop_tools(home: Path, checkout: Path) -> Path:
    """`ray` and `basin` for the user, as on a researcher's laptop: this test's installed packages, run by a
    Python of the same version that the user may execute (this venv's interpreter can live where the user
    cannot read, e.g. under /root), with basin's code from the user's checkout."""
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir() and
                Path(p, "ray").is_dir())
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if python is None:
        pytest.skip(f"no {version} outside this venv for the test's user to run `ray up` with")
    bin_dir = home / "laptop-bin"
    bin_dir.mkdir(exist_ok=True)
    entry = {"ray": "from ray.scripts.scripts import main", "basin": "from orchestrator.cli import main"}
    for name, imp in entry.items():
        (bin_dir / name).write_text(
            f"#!/bin/sh\nPYTHONPATH={checkout}:{site} exec {python} -c "
            f"'import sys; {imp}; sys.argv[0] = \"{name}\"; sys.exit(main())' \"$@\"\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def make_user() -> None:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    # '*': no password, but not a locked account ('!'), which sshd refuses even for key logins without PAM
    subprocess.run(["usermod", "-p", "*", USER], check=True)


@contextlib.contextmanager
def sshd(tmp: Path, port: int) -> Iterator[None]:
    """sshd on 127.0.0.1:port for the test's user only, keys only, in its own process group."""
    key = tmp / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pid_file = tmp / "sshd.pid"
    config = tmp / "sshd_config"
    config.write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {key}
PidFile {pid_file}
AllowUsers {USER}
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)   # its privilege-separation directory
    with open(tmp / "sshd.log", "w") as err:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=err, process_group=0)
    try:
        deadline = time.monotonic() + 30      # sshd writes its pid file once it listens
        while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_file.exists(), f"sshd did not start: {(tmp / 'sshd.log').read_text()[-2000:]}"
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def prepare_home(node: Node, port: int) -> Path:
    """The user's home as a new user's would be: an SSH key the node accepts, the checkout, a shared folder;
    the node environment's knobs this machine needs in ~/.bashrc (Ray runs its commands in login shells)."""
    home = node.home
    for stale in ["checkout", "shared", "laptop-bin", "basin-mlflow", ".basin.env", ".ray", "ray_bootstrap_config.yaml",
                  "ray_bootstrap_key.pem", "basin"]:
        p = home / stale
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    if os.environ.get("BASIN_FRESH_NODE") == "1":
        for p in (home / "basin-env", home / ".cache" / "pip"):
            shutil.rmtree(p, ignore_errors=True)
    if Path(RAY_TMP).exists():
        shutil.rmtree(RAY_TMP)
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    if not (ssh / "id_ed25519").exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "id_ed25519")], check=True)
    (ssh / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
    (ssh / "config").write_text(f"Host 127.0.0.1\n  Port {port}\n")
    (home / ".bashrc").write_text(
        "# The test node's own Ray temp folder: another user's `ray stop` must find nothing of it in /tmp/ray\n"
        f"export RAY_TMPDIR={RAY_TMP}\n"
        "# The head is 127.0.0.1: Ray must not swap it for this machine's outward address when it connects\n"
        "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0\n")
    checkout = home / "checkout"
    checkout.mkdir()
    for name in ["pyproject.toml", "README.md", "cluster-local.yaml"]:
        shutil.copy2(ROOT / name, checkout / name)
    for name in ["orchestrator", "trainers", "analysis", "scripts"]:
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (checkout / "sweeps").mkdir()
    (checkout / "sweeps" / "launch-check.yaml").write_text(SWEEP)
    (home / "shared").mkdir()
    node.chown(home)
    for p in (ssh, ssh / "id_ed25519", ssh / "authorized_keys"):
        os.chmod(p, 0o700 if p.is_dir() else 0o600)
    return checkout


def edit_cluster_file(checkout: Path, home: Path) -> dict:
    """cluster-local.yaml with only the values it marks EDIT changed."""
    path = checkout / "cluster-local.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["metadata"]["basin"]["storage"] = str(home / "shared")
    cfg["provider"]["head_ip"] = "127.0.0.1"
    cfg["provider"]["worker_ips"] = []
    cfg["auth"] = {"ssh_user": USER, "ssh_private_key": "~/.ssh/id_ed25519"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    marked = {line.split(":")[0].strip() for line in (ROOT / "cluster-local.yaml").read_text().splitlines()
              if "# EDIT" in line}
    assert {"storage", "head_ip", "worker_ips", "ssh_user", "ssh_private_key"} <= marked
    return cfg


def loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def listening_beyond_loopback(uid: int) -> list[str]:
    """Every socket the user's processes listen on that is reachable from outside this machine."""
    import psutil

    pids = {p.pid for p in user_processes(uid)}
    return [f"{c.laddr.ip}:{c.laddr.port} (pid {c.pid})" for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids and not loopback(c.laddr.ip)]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Node, Path, int]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: it creates the user the cluster runs as, and starts sshd")
    missing = [t for t in ("/usr/sbin/sshd", "rsync", "useradd", "ssh-keygen") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: apt-get install -y openssh-server rsync")
    busy = [f"{port} ({what})" for port, what in PORTS.items() if taken(port)]
    if busy:
        pytest.fail(f"ports on 127.0.0.1 taken by another program, the head needs them: {', '.join(busy)}")
    make_user()
    home = Path(pwd.getpwnam(USER).pw_dir)
    node = Node(home, home / "laptop-bin")
    port = free_port()
    checkout = prepare_home(node, port)
    laptop_tools(home, checkout)
    node.chown(home / "laptop-bin")
    node.run("ray", "--version", timeout=120)       # the user can run this test's Ray and basin
    tmp_path.chmod(0o700)
    with sshd(tmp_path, port):
        try:
            yield node, checkout, port
        finally:
            # Whatever a failed run left of the test's own user (the user exists for this test alone).
            import psutil

            left = user_processes(node.uid)
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(left, timeout=30)


def test_ray_up_submit_and_ray_down_on_loopback(node):
    import mlflow
    import psutil

    import analysis

    node, checkout, _ = node
    edit_cluster_file(checkout, node.home)
    node.run("ray", "get-auth-token", "--generate", timeout=60)
    timings = {}

    # basin check-cluster first, as docs/cluster.md says: a port the head needs, held by another program (as
    # another Ray on the head holds the job agent's), is named before anything starts. Launched anyway, the
    # cluster comes up without its job agent, and `basin submit` says so in one line.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 52365))
        held.listen()
        check = node.run("basin", "check-cluster", "cluster-local.yaml", cwd=checkout, timeout=120, check=False)
        assert check.returncode == 2 and check.stdout.strip() == \
            "cluster-local.yaml: provider.head_ip 127.0.0.1: taken: port 52365", check.stdout + check.stderr
        up = node.run("ray", "up", "-y", "--no-config-cache", "cluster-local.yaml", cwd=checkout, timeout=3600,
                      check=False)
        (node.home / "ray-up-agent-port-taken.log").write_text(up.stdout + up.stderr)
        if up.returncode == 0:
            sub = node.run("basin", "submit", "sweeps/launch-check.yaml", "--address", "http://127.0.0.1:8265",
                           cwd=checkout, timeout=600, check=False)
            assert sub.returncode == 2 and len(sub.stderr.strip().splitlines()) == 1, sub.stdout + sub.stderr
            assert "the head's job agent is not running" in sub.stderr and "52365" in sub.stderr, sub.stderr
            log("agent port taken: `ray up` succeeds, `basin submit` says: " + sub.stderr.strip()[:110] + "...")
        else:
            log(f"agent port taken: `ray up` fails (exit {up.returncode})")
        node.run("ray", "down", "-y", "cluster-local.yaml", cwd=checkout, timeout=600)
    t = time.monotonic()
    check = node.run("basin", "check-cluster", "cluster-local.yaml", cwd=checkout, timeout=120)
    assert "provider.head_ip 127.0.0.1: Python 3." in check.stdout and check.stdout.rstrip().endswith("next")
    log(f"basin check-cluster: {time.monotonic() - t:.1f} s: {check.stdout.strip().splitlines()[0].strip()}")

    t = time.monotonic()
    up = node.run("ray", "up", "-y", "--no-config-cache", "cluster-local.yaml", cwd=checkout, timeout=3600,
                  check=False)
    timings["ray up"] = time.monotonic() - t
    (node.home / "ray-up.log").write_text(up.stdout + up.stderr)
    assert up.returncode == 0, f"ray up failed:\n{(up.stdout + up.stderr)[-8000:]}"
    installed = re.search(r"installed in (\d+) s", up.stdout + up.stderr)
    log(f"ray up: {timings['ray up']:.0f} s (the install step: {installed.group(1) if installed else '?'} s)")
    assert listening_beyond_loopback(node.uid) == []

    t = time.monotonic()
    sub = node.run("basin", "submit", "sweeps/launch-check.yaml", "--address", "http://127.0.0.1:8265",
                   "--set", "epochs=2", cwd=checkout, timeout=300)
    timings["submit"] = time.monotonic() - t
    job = re.search(r"^job:\s+(\S+)", sub.stdout, re.M).group(1)
    log(f"basin submit: {timings['submit']:.1f} s, job {job}")

    t = time.monotonic()
    logs = node.run("basin", "logs", job, "--address", "http://127.0.0.1:8265", cwd=checkout, timeout=1800,
                    check=False)
    timings["sweep"] = time.monotonic() - t
    (node.home / "job.log").write_text(logs.stdout + logs.stderr)
    assert logs.returncode == 0, f"the job did not succeed:\n{(logs.stdout + logs.stderr)[-8000:]}"
    log(f"sweep of {TRIALS} trials: {timings['sweep']:.0f} s")

    # Parquet on the shared storage: every trial once, completed, with the override in its config.
    results = node.home / "shared" / "results" / "launch-check"
    r = analysis.load(str(results))
    assert len(r.trials) == TRIALS and r.trials.trial_key.is_unique
    assert set(r.trials.status) == {"completed"}
    assert set(r.epochs.groupby("trial_key").epoch.max()) == {2}     # --set epochs=2 reached every trial

    # MLflow on the head's server, reached through the tunnel docs/cluster.md gives (the server listens on the
    # head's cluster address only): one complete run per trial under the sweep's run.
    env = dict(line.split("=", 1) for line in (node.home / ".basin.env").read_text().splitlines())
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000" and env["BASIN_HEAD_IP"] == "127.0.0.1"
    local = f"http://127.0.0.1:{(tunnel := free_port())}"
    node.run("ssh", "-f", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "ControlMaster=no",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-L", f"{tunnel}:127.0.0.1:5000", f"{USER}@127.0.0.1", timeout=60)   # -f: back once it forwards
    client = mlflow.MlflowClient(tracking_uri=local)
    exp = client.get_experiment_by_name("launch-check")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in runs if x.data.tags.get("basin.role") == "trial"]   # beside them, seed-group runs
    assert len(parents) == 1 and len(children) == TRIALS
    assert {x.info.status for x in runs} == {"FINISHED"}
    ui = node.run("basin", "ui", str(results), "--tracking-uri", local, "--no-browser", cwd=checkout, timeout=120)
    assert f"{local}/#/experiments/{exp.experiment_id}/runs" in ui.stdout
    for p in user_processes(node.uid):   # the tunnel, ended as its user would end it
        if p.name() == "ssh" and f"{tunnel}:127.0.0.1:5000" in p.cmdline():
            p.terminate()

    mlflow_pid = int((node.home / "basin-mlflow" / "server.pid").read_text())
    t = time.monotonic()
    node.run("ray", "down", "-y", "cluster-local.yaml", cwd=checkout, timeout=600)
    timings["ray down"] = time.monotonic() - t
    # ray down ends Ray; the MLflow server ends with the head it watches; SSH's shared connections
    # (ControlPersist 10 s) end on their own. Nothing of the user's may be left.
    gone, alive = psutil.wait_procs(user_processes(node.uid), timeout=90)
    assert alive == [], f"left running after ray down: {[(p.pid, p.name()) for p in alive]}"
    assert not psutil.pid_exists(mlflow_pid)
    log("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
