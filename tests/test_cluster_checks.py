"""Before `ray up`: `basin check-cluster` and `scripts/setup-node.sh --check` name what would make it fail, one
line each (the full launch, and check-cluster's passing case over SSH, are in test_cluster_launch.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def basin(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "basin"), *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def lab_cluster(tmp_path: Path, **provider: object) -> Path:
    """cluster-local.yaml with its EDIT values filled in as a lab would, in a folder laid out like the checkout."""
    cfg = yaml.safe_load((ROOT / "cluster-local.yaml").read_text())
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cfg["auth"] = {"ssh_user": "raylab", "ssh_private_key": str(key)}
    cfg["metadata"]["basin"]["storage"] = str(tmp_path / "shared")
    cfg["provider"].update({"head_ip": "127.0.0.1", "worker_ips": [], **provider})
    for name in ("pyproject.toml", "README.md", "orchestrator", "trainers", "analysis", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 64)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_missing_key_and_token_and_placeholders_are_named_before_any_ssh(tmp_path):
    path = lab_cluster(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["auth"] = {"ssh_user": "CHANGE-ME", "ssh_private_key": "~/.ssh/no-such-key"}
    path.write_text(yaml.safe_dump(cfg))
    out = basin("check-cluster", "cluster.yaml", cwd=tmp_path, env={"HOME": str(tmp_path / "nohome")})
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines == [
        "cluster.yaml: auth.ssh_user: still 'CHANGE-ME': an account that exists on every node",
        "cluster.yaml: auth.ssh_private_key: ~/.ssh/no-such-key: no such file (the private key `ray up` logs in with)",
        "cluster.yaml: file_mounts: ~/.ray/auth_token: no such file here (make it with "
        "`ray get-auth-token --generate`)"], out.stdout
    assert out.stderr == ""

    (tmp_path / "id_ed25519").chmod(0o644)
    cfg["auth"] = {"ssh_user": "raylab", "ssh_private_key": str(tmp_path / "id_ed25519")}
    path.write_text(yaml.safe_dump(cfg))
    out = basin("check-cluster", "cluster.yaml", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert out.returncode == 2 and "readable by others, which ssh refuses (chmod 600" in out.stdout


def test_an_unreachable_head_is_one_line(tmp_path):
    """127.0.0.9 is on this machine's loopback, and nothing listens there on SSH's port (checked)."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.9", 22)) == 0:
            pytest.skip("something listens on 127.0.0.9:22 here")
    lab_cluster(tmp_path, head_ip="127.0.0.9")
    out = basin("check-cluster", "cluster.yaml", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout.strip().splitlines() == [
        "cluster.yaml: provider.head_ip 127.0.0.9: cannot log in as raylab over SSH: "
        "ssh: connect to host 127.0.0.9 port 22: Connection refused"]


def test_ray_validator_and_unreadable_files_are_one_line(tmp_path):
    lab_cluster(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: {type: local, head_ip: 127.0.0.1, worker_ips: []}\nauth: {ssh_user: x}\n"
                   "cluster_name: [not, a, name]\n")
    out = basin("check-cluster", "bad.yaml", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert out.returncode == 2 and out.stdout.startswith("bad.yaml: Ray's validator refuses it: "), out.stdout
    out = basin("check-cluster", "missing.yaml", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == \
        "basin check-cluster: error: missing.yaml: cannot read the cluster file (No such file or directory)"


def test_node_check_names_what_a_node_lacks(tmp_path):
    """setup-node.sh --check on this machine: storage that is not there, a port already taken, and no
    Python >= 3.11 on PATH, each one line; it changes nothing."""
    script = str(ROOT / "scripts" / "setup-node.sh")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(["bash", script, "--check", str(tmp_path / "nope"), "127.0.0.1", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("ok: Python 3.")
    assert lines[1:] == [f"missing: a writable shared storage folder at {tmp_path / 'nope'}",
                         f"taken: port {port}"] or lines[1:] == [
        "missing: rsync (Ray copies the checkout with it: apt-get install rsync)",
        f"missing: a writable shared storage folder at {tmp_path / 'nope'}", f"taken: port {port}"]

    # No Python >= 3.11 anywhere on PATH: the setup stops at once, saying what to install.
    old = tmp_path / "bin"
    old.mkdir()
    (old / "python3").write_text("#!/bin/sh\necho 'Python 3.9.2'\nexit 1\n")   # an old one that refuses 3.11 code
    (old / "python3").chmod(0o755)
    env = {"PATH": str(old), "HOME": str(tmp_path)}
    out = subprocess.run(["/bin/bash", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "setup-node.sh: no Python >= 3.11 on" in out.stderr and "apt-get install python3.11" in out.stderr
    out = subprocess.run(["/bin/bash", script, "--check"], capture_output=True, text=True, timeout=60, env=env)
    assert "missing: Python >= 3.11" in out.stdout


def test_ui_takes_the_tracking_uri_given_for_a_cluster_sweep(tmp_path):
    """A cluster sweep's folder names the head's server by its private address (or a SQLite file on the head);
    `basin ui --tracking-uri` (the tunnel's end) is used as given, and the recorded store is not checked."""
    folder = tmp_path / "results" / "s"
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text("name: s\nbase: {epochs: 1}\naxes: {seed: [0]}\n"
                                       "mlflow: sqlite:////nonexistent/mlflow.db\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = basin("ui", str(folder), cwd=tmp_path)
    assert out.returncode == 2 and "does not exist yet" in out.stderr
    out = basin("ui", str(folder), "--tracking-uri", f"http://127.0.0.1:{port}", "--no-browser", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"logs to the tracking server http://127.0.0.1:{port}" in out.stdout
    assert f"http://127.0.0.1:{port}/#/?workflowType=machine_learning" in out.stdout
