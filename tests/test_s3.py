"""S3 paths against a real S3-compatible server (moto) on 127.0.0.1: Parquet results written by a real
trial, read back with analysis.load("s3://..."), and Ray Tune storage (checkpoints, experiment state,
restore) on S3. pyarrow and Ray find the server through AWS_ENDPOINT_URL, as they would a MinIO."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

BUCKET = "basin-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; AWS_* variables point every client at it (Ray workers
    started later in this module inherit them)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def trial_tables():
    """The tables of one real (tiny) trial on the digits data."""
    import torch

    from trainers.config import make_config
    from trainers.train import run_trial

    torch.set_num_threads(1)
    cfg = make_config(dict(epochs=2, width=4, alpha_grid=3, ensemble_samples=2, device="cpu"))
    return cfg, run_trial(cfg)


def test_parquet_results_round_trip_through_s3(s3, trial_tables, tmp_path):
    """Rows written through the runner's Store onto S3 read back with analysis.load exactly as from disk."""
    from analysis.load import load
    from orchestrator.store import Store

    cfg, tables = trial_tables
    root = f"s3://{BUCKET}/results/sw"
    failed = {"trials": [{**tables["trials"][0], "status": "failed", "error": "preempted"}],
              "epochs": tables["epochs"][:1]}
    Store(root).write_tables(failed, "sw", cfg.key(), 0)             # a first attempt that died
    Store(root).write_tables(tables, "sw", cfg.key(), 1)             # its retry
    Store(str(tmp_path)).write_tables(tables, "sw", cfg.key(), 1)    # the same, on local disk

    # Objects really are in the bucket, one per table and attempt, named as on local disk.
    stored = keys(s3, "results/sw/")
    assert f"results/sw/trials/{cfg.key()}-a0.parquet" in stored
    assert f"results/sw/evals/{cfg.key()}-a1.parquet" in stored
    assert not any(".tmp" in k for k in stored)

    remote, local = load(root), load(str(tmp_path))
    assert list(remote.trials["attempt"]) == [1] and list(remote.trials["status"]) == ["completed"]
    assert len(remote.epochs) == len(tables["epochs"]) == cfg.epochs   # the failed attempt's rows dropped
    assert len(remote.evals) == len(tables["evals"]) > 0
    for name in ("trials", "epochs", "evals", "predictions"):
        assert getattr(remote, name).equals(getattr(local, name)), name


def test_the_report_of_a_sweep_on_s3_goes_to_its_folder_there(s3, trial_tables):
    """basin run's report for results on S3: written locally (to attach it to MLflow), copied to
    <sweep>/report/ in the bucket."""
    from orchestrator.runner import build_report
    from orchestrator.store import Store
    from orchestrator.sweep import parse_sweep

    cfg, tables = trial_tables
    sweep = parse_sweep({"name": "rep", "base": {"epochs": 2}}, "<test>", "", results=f"s3://{BUCKET}/results")
    Store(sweep.dir).write_tables(tables, "rep", cfg.key(), 0)
    folder = build_report(sweep, Store(sweep.dir))
    assert folder is not None and (Path(folder) / "index.html").exists()
    stored = keys(s3, "results/rep/report/")
    assert "results/rep/report/index.html" in stored and "results/rep/report/rep/index.html" in stored
    assert any(k.startswith("results/rep/report/rep/figures/") for k in stored)


def test_storage_paths(monkeypatch):
    from orchestrator import storage

    assert storage.join("s3://b/basin/", "results", "x") == "s3://b/basin/results/x"
    monkeypatch.setenv("BASIN_STORAGE", "s3://b/basin")
    assert storage.cluster_results() == "s3://b/basin/results"
    assert storage.cluster_results("") is None
    assert storage.is_shared("s3://b/x") and storage.is_shared("/nfs/x")
    assert not storage.is_shared("results/x") and not storage.is_shared("file:///tmp/x")


def test_tune_storage_on_s3(s3, tmp_path):
    import ray
    from ray import tune

    def trainable(config):
        """Counts to 4, checkpointing every step; fails once at step 2 when asked, to force a restore from the
        checkpoint stored on S3."""
        import tempfile

        from ray import tune

        start = 0
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                start = json.loads(Path(d, "state.json").read_text())["step"] + 1
        for step in range(start, 4):
            marker = Path(config["marker_dir"], f"failed-{config['x']}")
            if config["fail"] and step == 2 and not marker.exists():
                marker.touch()
                raise RuntimeError("simulated preemption")
            with tempfile.TemporaryDirectory() as d:
                Path(d, "state.json").write_text(json.dumps({"step": step}))
                tune.report({"step": step, "resumed_from": start, "score": config["x"] * step},
                            checkpoint=tune.Checkpoint.from_directory(d))

    from orchestrator.runner import start_ray

    assert start_ray(None, 2)  # a local Ray on 127.0.0.1, started after the AWS_* variables are set
    try:
        storage_path = f"s3://{BUCKET}/tune"
        tuner = tune.Tuner(
            trainable,
            param_space={"x": tune.grid_search([1, 2]), "fail": True, "marker_dir": str(tmp_path)},
            run_config=tune.RunConfig(
                name="exp", storage_path=storage_path,
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
        grid = tuner.fit()
        assert not grid.errors
        for r in grid:
            assert r.metrics["step"] == 3
            assert r.metrics["resumed_from"] == 2           # restarted from the step-1 checkpoint, read from S3
            assert r.checkpoint.path.startswith(f"{BUCKET}/tune/exp/")
            assert type(r.checkpoint.filesystem).__name__ == "S3FileSystem"

        stored = keys(s3, "tune/exp/")
        assert any(k.endswith("experiment_state.json") or "experiment_state" in k for k in stored)
        assert sum(k.endswith("state.json") and "/checkpoint_" in k for k in stored) == 4  # 2 kept per trial

        # A new driver (say after the head restarted) finds the experiment on S3 and restores it.
        assert tune.Tuner.can_restore(f"{storage_path}/exp")
        restored = tune.Tuner.restore(f"{storage_path}/exp", trainable=trainable).get_results()
        assert sorted(r.metrics["score"] for r in restored) == [3, 6]
    finally:
        ray.shutdown()
