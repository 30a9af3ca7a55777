"""`basin submit SWEEP.yaml` and `basin logs JOB`: run a sweep on a Ray cluster as a Ray job.

The job ships the working directory (this checkout, or the folder holding your sweeps) and runs
`python -m orchestrator.cli run SWEEP --address auto` on the head, so the sweep driver lives on the cluster:
closing the laptop does not stop it. Results must be on storage every node reaches: the sweep's own
`results` when it is a URI or an absolute (shared) path, else <BASIN_STORAGE>/results, BASIN_STORAGE being
what the cluster's head exports (s3://<bucket>/basin with cluster.yaml). Trials log to the head's MLflow
server (MLFLOW_TRACKING_URI on the head) unless the sweep names another.

A sweep driver that dies with the head (or is stopped) is resumed by submitting the same sweep again: the
runner skips trials whose results are stored and continues the others from their last checkpoints.

Every request carries the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token,
Ray's own order) unless RAY_AUTH_MODE=disabled. The address is the dashboard through an SSH tunnel
(`ray dashboard cluster.yaml` -> http://127.0.0.1:8265), never a port opened to the internet.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.cli import UserError
from orchestrator.storage import STORAGE_ENV, cluster_results, is_shared, join
from orchestrator.sweep import add_set_arg, load_sweep, read_yaml

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
AGENT_PORT = 52365  # the dashboard agent's HTTP port (ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)
# Never shipped with the job: environments, results, caches, data. Ray also honours .gitignore files.
EXCLUDES = [".git", ".venv", "venv", "env", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
            "*.egg-info", "results", "report", "mlruns", "mlartifacts", "*.db", "*.pt", "*.parquet",
            "data", ".whl"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# -- talking to the cluster -----------------------------------------------------------------------------
def auth_headers() -> dict[str, str]:
    """The bearer token for the cluster, found where Ray looks for it; {} when auth is off or none is found."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
        if path.is_file():
            token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_client(address: str) -> Any:
    """A JobSubmissionClient for `address` (checked: reachable, token accepted), or a UserError saying why not."""
    from ray.job_submission import JobSubmissionClient

    with jobs_api(address):
        return JobSubmissionClient(address, headers=auth_headers())


@contextlib.contextmanager
def jobs_api(address: str) -> Iterator[None]:
    """Every failure of a request to the Jobs API as one line naming its cause (UserError), not a traceback."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError:
        if not auth_headers():
            raise UserError(f"{address}: the cluster needs its token and none was found here: copy it from where "
                            "the cluster was created (`ray get-auth-token` there) to ~/.ray/auth_token, or set "
                            "RAY_AUTH_TOKEN") from None
        raise UserError(f"{address}: the cluster refused this machine's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                        "or ~/.ray/auth_token): it is another cluster's; copy the one `ray get-auth-token` prints "
                        "where the cluster was created") from None
    except ConnectionError:  # Ray's, and requests' (an OSError) when the stream or a later request drops
        raise UserError(f"cannot reach the Ray dashboard at {address}: no cluster answers there. Is the cluster "
                        "up (`ray up`) and the tunnel open (`ray dashboard cluster.yaml`, then --address "
                        "http://127.0.0.1:8265)?") from None
    except RuntimeError as e:
        text = str(e)
        if "No available agent" in text:
            raise UserError(f"{address}: the head's job agent is not running, so it cannot start jobs. It listens "
                            f"on port {AGENT_PORT}, which another Ray on the head may hold; read the head's "
                            "<RAY_TMPDIR or /tmp>/ray/session_latest/logs/dashboard_agent.log (`ray exec "
                            "cluster.yaml 'tail -30 /tmp/ray/session_latest/logs/dashboard_agent.log'`), then "
                            "`ray up` again") from None
        if "Version check returned 404" in text:
            raise UserError(f"{address}: this is not a Ray dashboard (no /api/version); the Jobs API is the "
                            "dashboard's port, 8265 by default") from None
        if text.startswith("Request failed with status code"):
            raise UserError(f"{address}: the Jobs API refused the request: {text.splitlines()[0]}") from None
        raise


# -- basin submit -----------------------------------------------------------------------------------------
def add_submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="the sweep file (YAML), inside the working directory")
    add_set_arg(p)
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS),
                   help=f"the Ray dashboard, through the SSH tunnel (default {DEFAULT_ADDRESS})")
    p.add_argument("--working-dir", default=".", help="folder shipped with the job (default: the current one); "
                   "code in it (a basin checkout) overrides what is installed on the cluster")
    p.add_argument("--results", help="results root on shared storage (default: the sweep's `results` when it "
                   f"is a URI or an absolute path, else ${STORAGE_ENV}/results on the cluster)")
    p.add_argument("--mlflow", help="tracking URI (default: the sweep's `mlflow`, else the head's MLflow server)")
    p.add_argument("--follow", action="store_true", help="then follow the job's logs until it ends")


def plan(sweep_path: str, working_dir: str, results: str | None, mlflow: str | None,
         env: dict[str, str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Check the sweep here, before anything is sent, and work out what runs on the cluster: the entrypoint,
    and the results URI and MLflow URI as far as they can be known from here (`env`: this machine's
    environment, where BASIN_STORAGE may name the cluster's storage)."""

    env = dict(os.environ) if env is None else env
    wd, path = Path(working_dir).resolve(), Path(sweep_path).resolve()
    if not wd.is_dir():
        raise UserError(f"--working-dir {working_dir}: no such folder")
    if not path.is_file():
        raise UserError(f"{sweep_path}: no such sweep file")
    if not path.is_relative_to(wd):
        raise UserError(f"{sweep_path}: the sweep file must be inside the working directory ({wd}) to travel "
                        "with the job; run from a folder that holds it, or pass --working-dir")
    data, _ = read_yaml(path)
    file_results = data.get("results") if isinstance(data, dict) else None
    file_mlflow = data.get("mlflow") if isinstance(data, dict) else None

    # The results root the cluster will use: explicit, else the sweep's if shared, else the cluster's storage.
    root_expr = None                      # a shell expression evaluated on the head
    if results is None and isinstance(file_results, str) and is_shared(file_results):
        results = file_results
    if results is None:
        results = cluster_results(env.get(STORAGE_ENV, ""))
    if results is None:
        unset = "is not set on the head: start the cluster with cluster.yaml or pass --results"
        root_expr = f'"${{{STORAGE_ENV}:?{unset}}}/results"'
    elif not is_shared(results):
        raise UserError(f"--results {results}: a cluster needs storage every node reaches: an s3:// URI or an "
                        "absolute path on a shared mount")
    if mlflow is None and isinstance(file_mlflow, str) and file_mlflow:
        mlflow = file_mlflow
    if mlflow and mlflow.startswith("sqlite:///") and not mlflow.startswith("sqlite:////"):
        raise UserError(f"{sweep_path}: mlflow: {mlflow} is relative to the job's temporary folder on the head and "
                        "would be lost; leave `mlflow` out to use the head's MLflow server, or give an absolute path")
    # Expand and check every trial here; where results and MLflow end up is checked on the head.
    sweep = load_sweep(path, results=results or "s3://cluster-storage/results", mlflow=mlflow or file_mlflow or False,
                       overrides=overrides)

    rel = path.relative_to(wd).as_posix()
    cmd = ["python", "-m", "orchestrator.cli", "run", shlex.quote(rel), "--address", "auto"]
    cmd += [f"--set {shlex.quote(o)}" for o in overrides]
    cmd += ["--results", root_expr or shlex.quote(results)]
    if mlflow:
        cmd += ["--mlflow", shlex.quote(mlflow)]
    elif file_mlflow is not False:
        # The head's MLflow server when the head has one; without it the runner's default applies.
        cmd.append('${MLFLOW_TRACKING_URI:+--mlflow "$MLFLOW_TRACKING_URI"}')
    return {
        "sweep": sweep, "entrypoint": " ".join(cmd), "working_dir": str(wd),
        "results": join(results, sweep.name) if results else f"${STORAGE_ENV}/results/{sweep.name} (on the head)",
        "mlflow": mlflow or ("off" if file_mlflow is False else
                             "the head's MLflow server (UI through the tunnel: http://127.0.0.1:5000)"),
    }


def cmd_submit(args: argparse.Namespace) -> int:
    p = plan(args.sweep, args.working_dir, args.results, args.mlflow, overrides=args.overrides)
    sweep = p["sweep"]
    client = job_client(args.address)
    submission_id = f"basin-{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    # Ray's INFO lines about zipping and uploading the working directory would stand before our own lines.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with jobs_api(args.address):
        job_id = client.submit_job(
            entrypoint=p["entrypoint"],
            submission_id=submission_id,
            runtime_env={"working_dir": p["working_dir"], "excludes": EXCLUDES,
                         "env_vars": {"PYTHONUNBUFFERED": "1"}},  # progress lines reach `basin logs` as printed
            metadata={"basin_sweep": sweep.name, "basin_results": p["results"]},
            entrypoint_num_cpus=0,            # the driver only schedules; it must not take a trial's CPU
        )
    print(f"job:     {job_id}")
    print(f"sweep:   {sweep.name} ({len(sweep.trials)} trials, {sweep.gpus:g} GPU each)")
    print(f"results: {p['results']}")
    print(f"mlflow:  {p['mlflow']}")
    print(f"follow:  basin logs {job_id} --address {args.address}")
    print(f"resume:  basin submit {args.sweep} --address {args.address}   (after a head restart or a stop)")
    if args.follow:
        return follow(client, job_id)
    return 0


# -- basin logs -----------------------------------------------------------------------------------------
def add_logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="the job id `basin submit` printed")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS),
                   help=f"the Ray dashboard, through the SSH tunnel (default {DEFAULT_ADDRESS})")
    p.add_argument("--no-follow", action="store_true", help="print the logs so far and the status, then exit")


def job_status(client: Any, job_id: str) -> str:
    try:
        with jobs_api(client.get_address()):
            return str(client.get_job_status(job_id).value)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise UserError(f"no job {job_id!r} on this cluster (`ray job list` shows them; a head restart "
                            "forgets jobs: submit the sweep again to resume it)") from None
        raise


def follow(client: Any, job_id: str, out: Any = None) -> int:
    """Print the job's logs as they come until it ends; exit status 0 if it succeeded, else 1."""
    import asyncio

    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    job_status(client, job_id)  # a clear error for an unknown id
    try:
        asyncio.run(tail())
    except Exception as e:  # the stream dropped (head restart, tunnel closed): say where things stand
        print(f"basin logs: lost the log stream ({type(e).__name__}: {e})", file=sys.stderr)
    else:  # the stream ends when the job does; its status may take a moment to follow
        deadline = time.monotonic() + 30
        while job_status(client, job_id) not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
    status = job_status(client, job_id)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def cmd_logs(args: argparse.Namespace) -> int:
    client = job_client(args.address)
    if args.no_follow:
        status = job_status(client, args.job)
        with jobs_api(args.address):
            sys.stdout.write(client.get_job_logs(args.job))
        print(f"job {args.job}: {status}", file=sys.stderr)
        return 0 if status in ("SUCCEEDED", "RUNNING", "PENDING") else 1
    return follow(client, args.job)
