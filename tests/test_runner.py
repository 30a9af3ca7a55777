"""Sweeps end to end on a real local Ray with real MLflow (SQLite, and `mlflow server` on 127.0.0.1):
one Parquet trial row and one MLflow child run per trial with the same numbers, retries from checkpoints,
a killed sweep resumed without re-running finished trials, an unreachable tracking server, and the
status/compact commands on the result."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TINY,
    assert_mirror_matches_parquet,
    assert_resumed,
    end_group,
    free_port,
    runs_by_key,
    wait_mid_sweep,
    write_sweep,
)
from mlflow.tracking import MlflowClient

from analysis.load import load, read_arrow
from orchestrator.cli import main
from orchestrator.runner import pandas_snippet, run_sweep
from orchestrator.store import Store
from orchestrator.sweep import load_sweep

pytestmark = pytest.mark.timeout(300)


def sweep_file(tmp_path: Path, name: str, body: str, base: dict | None = None) -> Path:
    base = {**TINY, **(base or {})}
    return write_sweep(tmp_path, f"name: {name}\nbase: {json.dumps(base)}\nresults: {tmp_path / 'results'}\n"
                                 + body, f"{name}.yaml")


def raw_trials(folder: str) -> list[dict]:
    """Every trials row on disk (not deduplicated, unlike analysis.load)."""
    return read_arrow(folder, "trials", ["trial_key", "attempt", "status", "name", "error"]).to_pylist()


def parent_run(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], "tags.`basin.role` = 'sweep'")
    return run


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    """A small sweep run once (local SQLite MLflow), shared by the tests that inspect its results."""
    tmp = tmp_path_factory.mktemp("finished")
    path = sweep_file(tmp, "tiny", "axes:\n  shape: [point, line]\n  seed: [0, 1]\n")
    sweep = load_sweep(path)
    return sweep, run_sweep(sweep, every=1, report=False)


def test_one_parquet_row_and_one_mlflow_run_per_trial(finished):
    sweep, summary = finished
    assert summary.ok and summary.completed == summary.total == 4 and not summary.mlflow_gap
    rows = raw_trials(sweep.dir)
    assert sorted(r["trial_key"] for r in rows) == sorted(t.key for t in sweep.trials)  # exactly one each
    assert {r["status"] for r in rows} == {"completed"} and {r["attempt"] for r in rows} == {0}
    assert sorted(r["name"] for r in rows) == sorted(t.name for t in sweep.trials)
    res = load(sweep.dir)
    assert len(res.epochs) == 4 * TINY["epochs"] and set(res.predictions.trial_key) == set(res.trials.trial_key)
    assert sweep.mlflow.startswith("sqlite:///") and sweep.mlflow.endswith("/tiny/mlflow.db")
    assert_mirror_matches_parquet(sweep.mlflow, sweep)
    # The three lines of pandas printed at the end work.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec("\n".join(pandas_snippet(sweep.dir)), {})
    assert "point" in out.getvalue() and "line" in out.getvalue() and "accuracy" in out.getvalue()
    # Tune's trial folders carry the readable names, not config hashes.
    dirs = {Path(p).name for p in glob.glob(f"{sweep.storage}/*/*") if os.path.isdir(p)}
    assert {d.rsplit("-", 1)[0] for d in dirs} == {t.name for t in sweep.trials}


def test_mlflow_server(ray_local, mlflow_server, tmp_path, capsys):
    path = sweep_file(tmp_path, "served", f"mlflow: {mlflow_server}\naxes:\n  seed: [0, 1]\n", {"shape": "line"})
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=1, report=False)
    assert summary.ok and not summary.mlflow_gap
    assert len(raw_trials(sweep.dir)) == 2
    assert_mirror_matches_parquet(mlflow_server, sweep)
    # `basin ui` on a sweep that logs to a server prints the URL of its runs there (nothing to start)
    capsys.readouterr()
    assert main(["ui", sweep.dir, "--no-browser"]) == 0
    eid = MlflowClient(mlflow_server).get_experiment_by_name("served").experiment_id
    assert f"{mlflow_server}/#/experiments/{eid}/runs?viewStateShareKey=basin&workflowType=machine_learning" in \
        capsys.readouterr().out


def test_rerun_of_a_finished_sweep_runs_nothing(finished, capsys):
    sweep, _ = finished
    before = sorted(os.listdir(f"{sweep.dir}/attempts"))
    summary = run_sweep(load_sweep(sweep.path), resume=True, report=False)
    assert summary.ok and summary.skipped == 4 and summary.ran == 0
    assert sorted(os.listdir(f"{sweep.dir}/attempts")) == before
    assert "4 completed earlier, 0 to run" in capsys.readouterr().out


def test_status_and_compact(finished, capsys):
    sweep, _ = finished
    root = str(Path(sweep.dir).parent)
    assert main(["status", root]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("tiny"))
    assert line.split()[1:6] == ["4", "0", "0", "4", "finished"]

    before = load(sweep.dir)
    tables = {t: getattr(before, t).sort_values(["trial_key", *before.table(t).columns[3:4]]).reset_index(drop=True)
              for t in ("trials", "epochs", "evals")}
    assert main(["compact", sweep.dir]) == 0
    for t in ("trials", "epochs", "evals", "predictions"):
        assert len(glob.glob(f"{sweep.dir}/{t}/*.parquet")) == 1, t
    after = load(sweep.dir)
    for t, df in tables.items():
        got = getattr(after, t).sort_values(["trial_key", *df.columns[3:4]]).reset_index(drop=True)
        assert got.equals(df), t
    # A second compaction after a crash between write and delete would leave duplicates: readers drop them.
    evals = glob.glob(f"{sweep.dir}/evals/*.parquet")[0]
    Path(evals).with_name("copy.parquet").write_bytes(Path(evals).read_bytes())
    assert len(load(sweep.dir).evals) == len(before.evals)


def test_retries_resume_from_the_checkpoint_and_a_failing_trial_does_not_stop_the_sweep(ray_local, tmp_path):
    path = sweep_file(tmp_path, "flaky", """
axes:
  case:
    - {seed: 1}
    - {seed: 1, extra: {basin_fail_at_epoch: 2, basin_fail_attempts: 1}}
    - {seed: 2, extra: {basin_fail_at_epoch: 1}}
retries: 1
""", {"shape": "line", "epochs": 3})
    sweep = load_sweep(path)
    steady, flaky, broken = (t.key for t in sweep.trials)
    summary = run_sweep(sweep, every=1, report=False)
    assert summary.completed == 2 and not summary.ok
    assert list(summary.failed) == [sweep.trials[2].name] and "injected failure" in summary.failed[sweep.trials[2].name]

    rows = sorted((r["trial_key"], r["attempt"], r["status"]) for r in raw_trials(sweep.dir))
    assert rows == sorted([(steady, 0, "completed"), (flaky, 0, "failed"), (flaky, 1, "completed"),
                           (broken, 0, "failed"), (broken, 1, "failed")])
    store = Store(sweep.dir)
    retry = store.attempts(flaky)[1]
    assert retry["resumed_from_epoch"] == 2 and retry["checkpoint"] == "tune"

    res = load(sweep.dir)
    assert sorted(res.trials.status) == ["completed", "completed", "failed"]
    ep = res.epochs[res.epochs.trial_key == flaky]
    assert list(ep.epoch) == [1, 2, 3] and set(ep.attempt) == {1}  # each epoch once, from the retry
    # Resuming from the checkpoint is exact: the same numbers as the trial that never failed.
    twin = res.epochs[res.epochs.trial_key == steady]
    cols = ["epoch", "train_loss", "train_acc", "val_acc", "val_nll"]
    assert ep[cols].reset_index(drop=True).equals(twin[cols].reset_index(drop=True))
    ev = res.evals.set_index(["trial_key", "split", "point"]).accuracy
    assert ev[flaky].equals(ev[steady])

    runs = runs_by_key(sweep.mlflow, sweep.name)
    assert sorted(len(v) for v in runs.values()) == [1, 1, 1]  # a retry continues its run
    assert runs[broken][0].info.status == "FAILED"
    assert runs[flaky][0].data.tags["basin.attempt"] == "1"
    assert_mirror_matches_parquet(sweep.mlflow, sweep)


def test_a_long_sweep_runs_as_consecutive_tune_runs(ray_local, tmp_path, monkeypatch, capsys):
    """Tune holds every trial of a run until it ends, so a sweep longer than runner.TUNE_CHUNK runs as several
    Tune runs (here chunks of 2): one progress count over the whole sweep, every trial once in Parquet (a
    retried one too) and one complete MLflow run each."""
    from orchestrator import runner

    monkeypatch.setattr(runner, "TUNE_CHUNK", 2)
    path = sweep_file(tmp_path, "chunked", """
axes:
  case:
    - {seed: 0}
    - {seed: 1}
    - {seed: 2, extra: {basin_fail_at_epoch: 1, basin_fail_attempts: 1}}
    - {seed: 3}
    - {seed: 4}
retries: 1
""")
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=0, report=False)
    assert summary.ok and summary.completed == 5
    assert len([d for d in Path(sweep.storage).iterdir() if d.is_dir()]) == 3  # 2 + 2 + 1
    out = capsys.readouterr().out
    assert "[chunked] 5/5 done, 0 running, 0 failed" in out and "/2 done" not in out
    completed = sorted(r["trial_key"] for r in raw_trials(sweep.dir) if r["status"] == "completed")
    assert completed == sorted(t.key for t in sweep.trials)
    assert Store(sweep.dir).attempts(sweep.trials[2].key)[1]["resumed_from_epoch"] == 1
    assert sorted(len(v) for v in runs_by_key(sweep.mlflow, sweep.name).values()) == [1] * 5
    assert_mirror_matches_parquet(sweep.mlflow, sweep)


def test_unreachable_tracking_server_does_not_fail_the_sweep(ray_local, tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    path = sweep_file(tmp_path, "offline", f"mlflow: {dead}\naxes:\n  seed: [0, 1]\n")
    summary = run_sweep(load_sweep(path), every=1, report=False)
    assert summary.ok and summary.completed == 2
    assert dead in summary.mlflow_gap and "Parquet results are complete" in summary.mlflow_gap
    res = load(str(tmp_path / "results" / "offline"))
    assert len(res.trials) == 2 and len(res.epochs) == 2 * TINY["epochs"] and len(res.evals) > 0
    out = capsys.readouterr().out
    assert f"MLflow at {dead} is unreachable" in out and "MLflow mirror incomplete" in out


def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_local, tmp_path):
    """`basin run` (its own local Ray) has its driver SIGKILLed, by pid alone, once two trials are done and a
    third has a checkpoint: every process of its Ray ends with it; the resumed run skips the finished trials,
    continues the third, and heals MLflow (a trial that finished just before the kill may have no run yet,
    the interrupted one's is left RUNNING and short of epochs): one complete run per trial."""
    import psutil

    path = sweep_file(tmp_path, "killed", "axes:\n  seed: [0, 1, 2, 3, 4]\nmax_concurrent: 1\n",
                      {"shape": "line", "epochs": 25})
    sweep = load_sweep(path)
    folder = sweep.dir
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--num-cpus", "1",
                                 "--every", "1", "--no-report"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_mid_sweep(folder, proc, tmp_path / "run.log")
            ray_procs = [p for p in psutil.Process(proc.pid).children(recursive=True)
                         if "reaper.py" not in " ".join(p.cmdline())]
            names = {p.name() for p in ray_procs}
            assert {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            _, alive = psutil.wait_procs(ray_procs, timeout=60)  # the watchdog ends them within ~7 s
            assert not alive, [p.name() for p in alive]
        finally:
            end_group(proc, grace=0)  # whatever is left of the group (nothing, when the above passed)
    done = {Path(p).name.split("-")[0] for p in glob.glob(f"{folder}/trials/*.parquet")}
    files = {p: Path(p).read_bytes() for p in glob.glob(f"{folder}/trials/*.parquet")}
    store = Store(folder)
    markers = {t.key: store.attempts(t.key) for t in sweep.trials}
    interrupted = [k for k in markers if markers[k] and k not in done]
    assert 2 <= len(done) < 5 and len(interrupted) == 1

    # compact=False: the finished trials' own files stay, so they can be compared byte for byte
    summary = run_sweep(load_sweep(path), resume=True, every=1, report=False, compact=False)
    assert summary.ok and summary.skipped == len(done) and summary.ran == 5 - len(done) and not summary.mlflow_gap
    for p, data in files.items():
        assert Path(p).read_bytes() == data
    assert_resumed(sweep, markers, done, epochs=25)  # MLflow healed: the parent FINISHED too
    assert parent_run(sweep.mlflow, sweep.name).info.status == "FINISHED"
