"""Mode connectivity (`connect`) and landscape probes end to end: a learned curve between two independent digits
solutions beats the straight line between them; connect trials whose endpoints are missing, unfinished or of
another architecture are refused before anything runs; a probe sweep with hyperplane and connect trials runs
through `basin run` (real Ray, MLflow and Parquet; connect trials in a second stage) and `basin analyze`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, write_sweep
from mlflow.tracking import MlflowClient

from analysis.load import load
from orchestrator.cli import UserError, main
from orchestrator.runner import run_sweep
from orchestrator.sweep import load_sweep
from trainers.config import make_config
from trainers.results import FolderSink, load_state, trial_row, write_tables
from trainers.train import run_trial

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, list[str]]:
    """Two standard digits MLPs (seeds 0 and 1, 20 epochs: the default recipe) in one results folder."""
    root = tmp_path_factory.mktemp("pair")
    keys = []
    for seed in (0, 1):
        cfg = make_config({"shape": "point", "seed": seed, "device": "cpu"})
        run_trial(cfg, FolderSink(root, sweep="pair", trial_key=cfg.key(), name=f"seed={seed}"))
        keys.append(cfg.key())
    return root, keys


def test_learned_curve_between_independent_solutions_has_lower_max_loss_than_the_line(pair):
    root, keys = pair
    cfg = make_config({"method": "connect", "shape": "curve", "connect_endpoints": "seed=0,1", "epochs": 10,
                       "alpha_grid": 11, "ensemble_samples": 2, "device": "cpu"})
    tables = run_trial(cfg, FolderSink(root, sweep="pair", trial_key=cfg.key(), name="connect"))
    test = {e["point"]: e for e in tables["evals"] if e["split"] == "test"}
    curve = [test[f"alpha_{i / 10:.2f}"]["nll"] for i in range(11)]
    line = [test[f"line_{i / 10:.2f}"]["nll"] for i in range(11)]
    assert curve[0] == pytest.approx(line[0]) and curve[-1] == pytest.approx(line[-1])  # the same endpoints
    assert max(curve) < 0.6 * max(line), (curve, line)
    assert test["center"]["accuracy"] > 0.9
    # the endpoints are the two trials' final weights, untouched; only the control point moved
    state = load_state(root / "checkpoints" / f"{cfg.key()}.pt")["model"]
    ends = torch.cat([load_state(root / "checkpoints" / f"{k}.pt")["model"]["sub.W"] for k in keys])
    assert torch.equal(state["sub.W"], ends)
    assert (state["learned"][0] - ends.mean(0)).norm() > 0.05 * ends.mean(0).norm()
    assert [r["main_point"] for r in tables["trials"]] == ["center"]


def sweep_file(tmp_path: Path, name: str, body: str, base: dict | None = None) -> Path:
    base = {**TINY, **(base or {})}
    return write_sweep(tmp_path, f"name: {name}\nbase: {json.dumps(base)}\nresults: {tmp_path / 'results'}\n"
                                 + body, f"{name}.yaml")


def refusal(path: Path) -> str:
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_connect_trials_with_missing_unfinished_or_foreign_endpoints_are_refused(tmp_path, capsys):
    connect = '{method: connect, shape: curve, connect_endpoints: "%s"}'
    missing = sweep_file(tmp_path, "missing", "axes:\n  t:\n    - {shape: point, seed: 0}\n    - "
                         + connect % "seed=0,1" + "\n")
    msg = refusal(missing)
    assert msg.startswith(f"{missing}: trial shape=curve,method=connect,connect_endpoints=seed=0,1: connect_endpoints: "
                          "no standard-training trial with seed=1 on the same data and architecture (dataset digits, "
                          "model mlp, width 4, batchnorm true, num_classes 0)"), msg

    cnn = make_config({**TINY, "shape": "point", "model": "cnn", "seed": 1, "checkpoint_every": 1})
    foreign = sweep_file(tmp_path, "foreign", "axes:\n  t:\n    - {shape: point, seed: 0}\n"
                         "    - {shape: point, seed: 1, model: cnn}\n    - " + connect % "%s,%s" + "\n")
    mlp = make_config({**TINY, "shape": "point", "seed": 0})
    foreign.write_text(foreign.read_text() % (mlp.key(), cnn.key()))
    msg = refusal(foreign)
    assert f"[{cnn.key()}] is of another architecture (model cnn, not mlp)" in msg, msg

    # an endpoint named by key that exists only in the results folder, as a failed trial
    failed = make_config({**TINY, "shape": "point", "seed": 7})
    unfinished = sweep_file(tmp_path, "unfinished", "axes:\n  t:\n    - {shape: point, seed: 0}\n    - "
                            + connect % f"{mlp.key()},{failed.key()}" + "\n")
    write_tables(tmp_path / "results" / "unfinished",
                 {"trials": [trial_row(failed.to_dict(), name="seed=7", status="failed", error="boom")]},
                 "unfinished", failed.key(), 0)
    msg = refusal(unfinished)
    assert f"connect_endpoints: trial seed=7 [{failed.key()}] has not finished (status failed)" in msg

    no_checkpoint = sweep_file(tmp_path, "nockpt", "axes:\n  t:\n    - {shape: point, seed: 0}\n"
                               "    - {shape: point, seed: 1}\n    - " + connect % "seed=0,1" + "\n",
                               {"checkpoint_every": 0})
    assert "keeps no checkpoint (checkpoint_every 0)" in refusal(no_checkpoint)

    # basin train: the endpoints are looked for in --out; none there -> one line, exit 2
    cfg = tmp_path / "connect.yaml"
    cfg.write_text('method: connect\nshape: curve\nconnect_endpoints: "seed=0,1"\nepochs: 1\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "empty"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("basin train: error: connect_endpoints: no standard-training trial with seed=0") \
        and "\n" not in err


def test_probe_sweep_through_basin_run_and_analyze(ray_local, tmp_path):
    small = {"probe_examples": 200, "probe_top_k": 3, "probe_trace_samples": 6, "probe_hyperplane_dim": 4}
    body = """retries: 0
axes:
  t:
    - {shape: point, seed: 0, probes: all}
    - {shape: point, seed: 1, probes: all}
    - {shape: point, seed: 2, extra: {basin_fail_at_epoch: 1}}
    - {shape: line, probes: hessian, probe_points: "endpoint_0,center"}
    - {method: hyperplane, shape: point, hyperplane_dim: 20, probes: goldilocks, probe_points: "origin,point"}
    - {method: connect, shape: curve, connect_endpoints: "seed=0,1"}
    - {method: connect, shape: curve, connect_endpoints: "seed=0,2"}
"""
    sweep = load_sweep(sweep_file(tmp_path, "landscape", body, small))
    names = {t.key: t.name for t in sweep.trials}
    summary = run_sweep(sweep, every=1)
    # seed 2 fails in stage 1, so the connect trial that needs it is not run (and counts as failed)
    assert summary.completed == 5 and summary.total == 7
    assert sorted(summary.failed) == sorted(n for n in names.values() if "seed=2" in n or "seed=0,2" in n)
    refused = summary.failed[next(n for n in names.values() if "seed=0,2" in n)]
    assert "has not finished (status failed)" in refused

    res = load(sweep.dir)
    done = res.trials[res.trials.status == "completed"]
    assert set(done.method) == {"subspace", "hyperplane", "connect"}
    p = res.probes.merge(res.trials[["trial_key", "method", "shape"]])
    counts = p.groupby(["method", "shape", "point", "probe"]).size().to_dict()
    assert counts == {("subspace", "point", "point", "hessian"): 2, ("subspace", "point", "point", "goldilocks"): 2,
                      ("subspace", "point", "point", "stiffness"): 2, ("subspace", "line", "endpoint_0", "hessian"): 1,
                      ("subspace", "line", "center", "hessian"): 1, ("hyperplane", "point", "origin", "goldilocks"): 1,
                      ("hyperplane", "point", "point", "goldilocks"): 1}
    assert p[p.probe == "hessian"].eigenvalues.map(len).eq(3).all()
    conn = res.evals[res.evals.trial_key.isin(done[done.method == "connect"].trial_key)]
    assert {"alpha", "line", "control", "center", "endpoint"} <= set(conn.kind)
    # the connect trial reached MLflow (stage 2 feeds the same mirror)
    client = MlflowClient(tracking_uri=sweep.mlflow)
    exp = client.get_experiment_by_name("landscape")
    key = done[done.method == "connect"].trial_key.iloc[0]
    (run,) = client.search_runs([exp.experiment_id], f"tags.`basin.trial_key` = '{key}'")
    assert run.info.status == "FINISHED" and "test/center/nll" in run.data.metrics
    point = done[(done.method == "subspace") & (done["shape"] == "point")].trial_key.iloc[0]
    (run,) = client.search_runs([exp.experiment_id], f"tags.`basin.trial_key` = '{point}'")
    row = p[(p.trial_key == point) & (p.probe == "hessian")].iloc[0]
    assert run.data.metrics["probe/point/hessian_top"] == row.eigenvalues[0]
    assert run.data.metrics["probe/point/hessian_trace"] == row.trace
    assert {"probe/point/goldilocks_trace_ratio", "probe/point/stiffness_within"} <= set(run.data.metrics)

    out = tmp_path / "report"
    assert main(["analyze", sweep.dir, "--out", str(out)]) == 0
    page = (out / "landscape" / "index.html").read_text()
    for fig in ("hyperplane_accuracy", "hessian_spectrum", "stiffness", "connect_loss"):
        assert (out / "landscape" / "figures" / f"{fig}.png").stat().st_size > 5000, fig
        assert f"figures/{fig}.png" in page
    for table in ("goldilocks", "hessian_spectrum", "stiffness", "connect"):
        assert (out / "landscape" / "tables" / f"{table}.csv").stat().st_size > 50, table
