"""`basin check-cluster CLUSTER.yaml`: what would make `ray up` fail, found in seconds, one line each.

`ray up` meets a missing SSH key or an unreachable head by retrying SSH for five minutes and then printing
pages of log. This reads the cluster file as Ray will (Ray's own validator), then checks what Ray does not:
the SSH key, the cluster's token, the files it mounts, and, for machines a lab already has (Ray's `local`
provider), logs in to every node as `ray up` will and runs `scripts/setup-node.sh --check` there (Python
>= 3.11 with venv, rsync, the shared storage, and on the head the ports Ray and MLflow need).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cli import UserError
from orchestrator.submit import AGENT_PORT

# The ports the head's services take (cluster-local.yaml): GCS, dashboard / Jobs API, MLflow, the job agent.
HEAD_PORTS = (6379, 8265, 5000, AGENT_PORT)
SETUP_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup-node.sh"
PLACEHOLDER = "CHANGE-ME"


def read_cluster(path: str) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the cluster file ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a Ray cluster file (a mapping)")
    return cfg


def ray_problem(cfg: dict[str, Any]) -> str:
    """Ray's own verdict on the file ("" when it accepts it), in one line."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:  # Ray's CLI logger prints warnings about Docker file mounts, which do not apply here
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            validate_config(prepare_config(copy.deepcopy(cfg)))
    except Exception as e:  # jsonschema's ValidationError, ValueError, KeyError: Ray's words, first line
        return f"Ray's validator refuses it: {str(e).strip().splitlines()[0]}"
    return ""


def file_problems(cfg: dict[str, Any], here: Path) -> list[str]:
    """The SSH key, the token and the mounted files, on this machine."""
    out = []
    auth = cfg.get("auth") or {}
    if PLACEHOLDER in str(auth.get("ssh_user", "")):
        out.append(f"auth.ssh_user: still {auth['ssh_user']!r}: an account that exists on every node")
    key = auth.get("ssh_private_key")
    if key:
        p = Path(os.path.expanduser(key))
        if not p.is_file():
            out.append(f"auth.ssh_private_key: {key}: no such file (the private key `ray up` logs in with)")
        elif not os.access(p, os.R_OK):
            out.append(f"auth.ssh_private_key: {key}: not readable by this user")
        elif p.stat().st_mode & 0o077:
            out.append(f"auth.ssh_private_key: {key}: readable by others, which ssh refuses (chmod 600 {key})")
    meta = (cfg.get("metadata") or {}).get("basin") or {}
    for k, v in meta.items():
        if PLACEHOLDER in str(v):
            out.append(f"metadata.basin.{k}: still {v!r}")
    for remote, local in (cfg.get("file_mounts") or {}).items():
        src = Path(os.path.expanduser(local))
        src = src if src.is_absolute() else here / src
        if not src.exists():
            hint = ("make it with `ray get-auth-token --generate`" if remote == "~/.ray/auth_token"
                    else "run `ray up` from the root of the basin checkout")
            out.append(f"file_mounts: {local}: no such file here ({hint})")
    return out


def ssh_command(cfg: dict[str, Any], ip: str, remote: str) -> list[str]:
    """ssh as `ray up` runs it (its options), without a prompt, for at most 10 s to connect."""
    auth = cfg.get("auth") or {}
    opts = {"StrictHostKeyChecking": "no", "UserKnownHostsFile": os.devnull, "IdentitiesOnly": "yes",
            "BatchMode": "yes", "ConnectTimeout": "10"}
    if auth.get("ssh_proxy_command"):
        opts["ProxyCommand"] = auth["ssh_proxy_command"]
    key = ["-i", os.path.expanduser(auth["ssh_private_key"])] if auth.get("ssh_private_key") else []
    return ["ssh", *key, *[a for k, v in opts.items() for a in ("-o", f"{k}={v}")],
            f"{auth.get('ssh_user', '')}@{ip}", remote]


def node_problems(cfg: dict[str, Any], where: str, ip: str, head: bool) -> tuple[list[str], str]:
    """(problems, what is fine) of one node of a local-provider cluster, from setup-node.sh --check there."""
    storage = str(((cfg.get("metadata") or {}).get("basin") or {}).get("storage", ""))
    args = [storage or "''", *([ip, *map(str, HEAD_PORTS)] if head else [])]
    cmd = ssh_command(cfg, ip, "bash -s -- --check " + " ".join(args))
    try:
        done = subprocess.run(cmd, input=SETUP_SCRIPT.read_text(), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return [f"{where} {ip}: no answer over SSH within 60 s"], ""
    user = (cfg.get("auth") or {}).get("ssh_user", "")
    if done.returncode == 255:  # ssh's own failure: the last line is its reason
        reason = (done.stderr.strip().splitlines() or ["ssh failed"])[-1]
        if "Permission denied" in reason:
            reason += f" (the key is not in ~{user}/.ssh/authorized_keys on {ip})"
        return [f"{where} {ip}: cannot log in as {user} over SSH: {reason}"], ""
    if done.returncode != 0:
        return [f"{where} {ip}: the check failed there: {(done.stderr.strip().splitlines() or ['?'])[-1]}"], ""
    lines = done.stdout.strip().splitlines()
    problems = [f"{where} {ip}: {line}" for line in lines if not line.startswith("ok:")]
    fine = "; ".join(line.removeprefix("ok: ") for line in lines if line.startswith("ok:"))
    return problems, fine


def check(path: str, here: Path | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes) of a cluster file; `here` is where `ray up` will run (default: this folder)."""
    cfg = read_cluster(path)
    problems = [p for p in [ray_problem(cfg)] if p] + file_problems(cfg, here or Path.cwd())
    notes = []
    provider = cfg.get("provider") or {}
    if provider.get("type") == "local" and not any(p.startswith("auth.") for p in problems):
        nodes = [("provider.head_ip", provider.get("head_ip"), True)]
        nodes += [(f"provider.worker_ips[{i}]", ip, False) for i, ip in enumerate(provider.get("worker_ips") or [])]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda n: node_problems(cfg, n[0], str(n[1]), n[2]), nodes))
        for (where, ip, _), (bad, fine) in zip(nodes, results, strict=True):
            problems += bad
            if not bad:
                notes.append(f"{where} {ip}: {fine or 'ok'}")
    elif provider.get("type") != "local":
        notes.append(f"provider {provider.get('type')}: nodes are created by `ray up`; their setup is checked there")
    return problems, notes


def add_check_cluster_args(p: Any) -> None:
    p.add_argument("cluster", help="the Ray cluster file, e.g. cluster-local.yaml")


def cmd_check_cluster(args: Any) -> int:
    problems, notes = check(args.cluster)
    for line in problems:
        print(f"{args.cluster}: {line}")
    if problems:
        return 2
    for line in notes:
        print(f"  {line}")
    print(f"{args.cluster}: ok: `ray up {args.cluster}` next")
    return 0
