"""cluster.yaml and cluster-local.yaml: Ray's own validator accepts them, nothing but SSH is open to the
internet, token auth is on for every `ray start` and driver, the dashboard and MLflow bind private
addresses only, and the head's MLflow start script really starts a server."""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import os
import re
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster-local.yaml"]
PROTECTED = {6379: "Ray GCS", 8265: "dashboard / Jobs API", 10001: "Ray Client", 5000: "MLflow"}


def read(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def prepared(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = prepare_config(copy.deepcopy(cfg))
    validate_config(out)
    return out


# -- the checks, as functions, so the tests below can show that they catch a bad config ----------------------
def effective_ingress(cfg: dict) -> list[dict]:
    """The inbound rules `ray up` gives the cluster's security group: Ray's own defaults (intra-group traffic,
    SSH) plus the config's IpPermissions, built by the same function Ray uses."""
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    extra = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    return _create_default_inbound_rules({"sg-basin"}, extra)


def public_exposures(rules: list[dict]) -> list[str]:
    """Every (port range, address range) that a rule opens to addresses outside private networks."""
    found = []
    for r in rules:
        cidrs = [x["CidrIp"] for x in r.get("IpRanges", [])] + [x["CidrIpv6"] for x in r.get("Ipv6Ranges", [])]
        for cidr in cidrs:
            if not ipaddress.ip_network(cidr, strict=False).is_private:
                lo, hi = (0, 65535) if str(r.get("IpProtocol")) == "-1" else (r["FromPort"], r["ToPort"])
                found.append(f"{lo}-{hi} from {cidr}")
    return found


def protected_ports_exposed(rules: list[dict]) -> list[str]:
    out = []
    for e in public_exposures(rules):
        lo, hi = map(int, e.split()[0].split("-"))
        out += [f"{port} ({what}) via {e}" for port, what in PROTECTED.items() if lo <= port <= hi]
    return out


def ray_start_commands(cfg: dict) -> list[str]:
    cmds = cfg.get("head_start_ray_commands", []) + cfg.get("worker_start_ray_commands", [])
    return [c for c in cmds if re.search(r"\bray start\b", c)]


def auth_problems(cfg: dict) -> list[str]:
    """What keeps token auth from being on everywhere: a `ray start` without RAY_AUTH_MODE=token set before
    it in the same command, the token file not mounted, login shells (drivers, `ray exec`) without the mode."""
    problems = []
    for c in ray_start_commands(cfg):
        before = c[: c.index("ray start")]
        if not re.search(r"(export\s+|\b)RAY_AUTH_MODE=token\b", before):
            problems.append(f"no RAY_AUTH_MODE=token before: {c}")
    if "~/.ray/auth_token" not in cfg.get("file_mounts", {}):
        problems.append("the token file ~/.ray/auth_token is not mounted on the nodes")
    setup = "\n".join(cfg.get("setup_commands", []))
    if "setup-node.sh" in setup:  # the commands the setup runs are the script's
        setup += (ROOT / "scripts" / "setup-node.sh").read_text()
    if not re.search(r"export RAY_AUTH_MODE=token.*\n(.*\n)*.*>> ~/.bashrc", setup):
        problems.append("login shells on the nodes do not get RAY_AUTH_MODE=token")
    return problems


def head_start(cfg: dict) -> str:
    return next(c for c in cfg["head_start_ray_commands"] if "ray start --head" in c)


# -- tests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_ray_validator_accepts_the_config(name):
    cfg = prepared(read(name))
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_aws_cluster_shape_comes_from_the_values_at_the_top():
    raw = read("cluster.yaml")
    meta, cfg = raw["metadata"]["basin"], prepared(raw)
    assert set(meta) == {"region", "bucket", "head_type", "gpu1_type", "gpu8_type"}
    types = cfg["available_node_types"]
    assert cfg["provider"]["region"] == meta["region"]
    assert types[cfg["head_node_type"]]["node_config"]["InstanceType"] == meta["head_type"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}          # no trials on the head
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert {v["node_config"]["InstanceType"] for v in workers.values()} == {meta["gpu1_type"], meta["gpu8_type"]}
    for t in types.values():  # current images, looked up at launch; not Ray's Ubuntu 18.04 `latest_dlami`
        assert t["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/")
        assert "22.04" in t["node_config"]["ImageId"]
    for w in workers.values():
        assert w["min_workers"] == 0                                         # autoscaling from zero
        assert w["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    # the bucket is used through the head's start script (metadata.basin -> BASIN_STORAGE, MLflow artifacts)
    assert any("start-mlflow.sh" in c for c in raw["head_start_ray_commands"])


@pytest.mark.parametrize("name", CONFIGS)
def test_token_auth_on_every_node_and_driver(name):
    cfg = prepared(read(name))
    assert ray_start_commands(cfg), "no ray start command found"
    assert auth_problems(cfg) == []


def test_no_ray_or_mlflow_port_is_open_to_the_internet():
    rules = effective_ingress(prepared(read("cluster.yaml")))
    assert protected_ports_exposed(rules) == []
    # what is public at all: SSH, and only SSH (Ray's default rule; docs/cluster.md narrows it to one address)
    assert {e.split()[0] for e in public_exposures(rules)} <= {"22-22"}
    for node_type in read("cluster.yaml")["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"]  # no other group sneaks rules in


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_and_mlflow_bind_private_addresses_only(name):
    cfg = read(name)
    assert "--dashboard-host=127.0.0.1" in head_start(cfg)
    every_command = " ".join(cfg.get("setup_commands", []) + cfg["head_start_ray_commands"]
                             + cfg["worker_start_ray_commands"])
    assert "0.0.0.0" not in every_command
    script = "\n".join(line for line in (ROOT / "scripts" / "start-mlflow.sh").read_text().splitlines()
                       if not line.lstrip().startswith("#"))
    assert "0.0.0.0" not in script and '--host "$host"' in script
    assert "hostname -I" in script and "head_ip" in script     # the private address, or the local head's
    if name == "cluster-local.yaml":                            # Ray advertises the address the file names
        assert "--node-ip-address=$BASIN_HEAD_IP" in head_start(cfg)


@pytest.mark.parametrize("name", CONFIGS)
def test_mounted_files_exist_and_are_the_package_only(name):
    """`ray up` hashes every mounted file on each run: the checkout's package files, never the whole tree
    (a .venv of several GB), and the token."""
    mounts = read(name)["file_mounts"]
    assert mounts.pop("~/.ray/auth_token") == "~/.ray/auth_token"
    for remote, local in mounts.items():
        assert remote.startswith("~/basin/") and (ROOT / local).exists(), (remote, local)
        assert (ROOT / local).resolve() != ROOT
    assert {"./pyproject.toml", "./orchestrator", "./trainers", "./scripts"} <= set(mounts.values())


def test_local_config_has_the_same_setup():
    aws, local = read("cluster.yaml"), read("cluster-local.yaml")
    assert local["setup_commands"] == aws["setup_commands"]
    assert local["file_mounts"] == aws["file_mounts"]
    # the same environment before each `ray start`, but for the local head's choice of Ray's autoscaler v1
    assert [c.split("ray start")[0].replace(" RAY_enable_autoscaler_v2=0", "") for c in ray_start_commands(local)] \
        == [c.split("ray start")[0] for c in ray_start_commands(aws)]


def test_the_checks_catch_a_bad_config():
    """The checks above fail on the mistakes they exist for."""
    cfg = read("cluster.yaml")
    cfg["provider"]["security_group"]["IpPermissions"] = [
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
        {"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
    ]
    exposed = protected_ports_exposed(effective_ingress(cfg))
    assert any(e.startswith("8265") and "0.0.0.0/0" in e for e in exposed)
    assert {int(e.split()[0]) for e in exposed} == set(PROTECTED)          # all four, through "::/0"
    assert not any("10.0.0.0/8" in e for e in exposed)                    # private ranges are fine

    cfg = read("cluster.yaml")
    cfg["worker_start_ray_commands"][-1] = cfg["worker_start_ray_commands"][-1].replace("RAY_AUTH_MODE=token ", "")
    del cfg["file_mounts"]["~/.ray/auth_token"]
    cfg["setup_commands"] = ["echo 'source ~/basin-env/bin/activate' >> ~/.bashrc"]
    problems = auth_problems(cfg)
    assert len(problems) == 3 and "--address" in problems[0] and "mounted" in problems[1]
    assert "login shells" in problems[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_head_mlflow_script_starts_a_server(tmp_path):
    """scripts/start-mlflow.sh as the head runs it (storage from the config's metadata), bound to 127.0.0.1
    here: the server answers, ~/.basin.env names it, the storage and the head's address, artifacts land under
    <storage>/mlflow; a second run (ray up again) restarts it on the same store; --watch ends it when the Ray
    head it watches ends (a process named gcs_server stands for it here: the real one is in
    test_cluster_launch.py), and --stop ends it at once."""
    import mlflow
    import psutil

    home, storage, port = tmp_path / "home", tmp_path / "shared", free_port()
    home.mkdir()
    boot = tmp_path / "ray_bootstrap_config.yaml"
    cfg = read("cluster-local.yaml")
    boot.write_text(yaml.safe_dump({**cfg, "metadata": {"basin": {"storage": str(storage)}},
                                    "provider": {**cfg["provider"], "head_ip": "127.0.0.1"}}))
    venv_bin = str(Path(os.sys.executable).parent)
    env = {**os.environ, "HOME": str(home), "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "BASIN_MLFLOW_PORT": str(port)}
    env.pop("BASIN_STORAGE", None)
    script = str(ROOT / "scripts" / "start-mlflow.sh")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True, timeout=180)

    pid_file = home / "basin-mlflow" / "server.pid"
    done = run(str(boot))
    gcs = None
    try:
        assert done.returncode == 0, done.stderr
        first = int(pid_file.read_text())
        url = f"http://127.0.0.1:{port}"
        assert (home / ".basin.env").read_text().splitlines() == [f"MLFLOW_TRACKING_URI={url}",
                                                                 f"BASIN_STORAGE={storage}", "BASIN_HEAD_IP=127.0.0.1"]
        assert urllib.request.urlopen(f"{url}/health", timeout=5).status == 200
        client = mlflow.MlflowClient(tracking_uri=url)
        exp = client.create_experiment("cluster-check")
        run_id = client.create_run(exp).info.run_id
        client.log_metric(run_id, "acc", 0.5)
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run_id, str(tmp_path / "note.txt"))
        assert [p.read_text() for p in (storage / "mlflow").rglob("note.txt")] == ["hello"]

        again = run(str(boot))
        assert again.returncode == 0, again.stderr
        second = int(pid_file.read_text())
        assert second != first and not psutil.pid_exists(first)
        assert client.get_run(run_id).data.metrics == {"acc": 0.5}       # same store after the restart

        gcs_port = str(free_port())
        assert run("--watch", gcs_port).returncode == 1                    # no Ray head there: nothing to watch
        # a process whose command line is a Ray head's GCS on that port
        gcs = subprocess.Popen(["bash", "-c", f'exec -a "gcs_server --gcs_server_port={gcs_port}" sleep 600'])
        watch = run("--watch", gcs_port)
        assert watch.returncode == 0 and f"gcs_server pid {gcs.pid}" in watch.stdout
        server = psutil.Process(second)
        gcs.terminate()
        gcs.wait()
        server.wait(60)                                                    # the watcher ended the server

        assert run(str(boot)).returncode == 0
        third = int(pid_file.read_text())
        stop = run("--stop")
        assert stop.returncode == 0 and not psutil.pid_exists(third) and not pid_file.exists()
    finally:
        if gcs is not None and gcs.poll() is None:
            gcs.kill()
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
