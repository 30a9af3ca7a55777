"""`basin run` on a real local Ray over a results folder that breaks: a full disk (a real tmpfs of a few MB),
a read-only folder, an unreadable trials file and checkpoint from an earlier run. Each: the exact one line,
the sweep stopped cleanly with its run record closed, nothing half-written left behind, and a re-run after
the fix that finishes every trial exactly once with attempt numbers that count only real attempts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, write_sweep

from analysis.load import load, read_arrow
from orchestrator.cli import UserError, main
from orchestrator.runner import run_sweep
from orchestrator.store import Store
from orchestrator.sweep import load_sweep

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A real small filesystem: `mount -t tmpfs` (needs root), unmounted at teardown. Yields a function
    (size, read_only) -> None that remounts it."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")

    def remount(size: str = "2m", read_only: bool = False) -> None:
        opts = f"remount,size={size}," + ("ro" if read_only else "rw")
        subprocess.run(["mount", "-o", opts, str(where)], check=True)

    yield where, remount
    subprocess.run(["umount", "-l", str(where)], check=True)


def sweep_at(folder: Path, results: Path, name: str, seeds: int) -> Path:
    return write_sweep(folder, f"name: {name}\nbase: {json.dumps(TINY)}\nresults: {results}\nmlflow: false\n"
                               f"axes:\n  shape: [point, line]\n  seed: {list(range(seeds))}\n", f"{name}.yaml")


def leftovers(folder: str) -> list[str]:
    """Temp files of atomic writes and empty attempt markers: what a cut-short write leaves."""
    out = []
    for dirpath, _, names in os.walk(folder):
        if "/tune" in dirpath:  # Ray Tune's own folder
            continue
        for n in names:
            p = os.path.join(dirpath, n)
            if n.endswith(".tmp") or (n.endswith(".json") and "attempts" in dirpath and os.path.getsize(p) == 0):
                out.append(p)
    return out


def run_record(folder: str) -> dict:
    (name,) = os.listdir(f"{folder}/runs")
    return json.loads(Path(folder, "runs", name).read_text())


@pytest.mark.slow  # two runs of 10 trials: about a minute on two cores, more when they are busy
def test_full_disk_stops_the_sweep_cleanly_and_a_rerun_finishes_it(ray_local, tmpfs, tmp_path, capsys):
    disk, remount = tmpfs
    remount(size="1200k")  # the 1 MiB writable probe fits; about 6 trials' results (~150 kB each) do
    sweep = load_sweep(sweep_at(tmp_path, disk / "results", "full", seeds=5))
    summary = run_sweep(sweep, every=60, report=False)
    line = f"results: cannot write to {sweep.dir} (No space left on device)"
    out = capsys.readouterr().out
    assert summary.stopped == line and not summary.ok and 0 < summary.completed < 10
    assert f"[full] {line}; stopping the sweep" in out
    assert f"[full] stopped early: {line}: free space (or fix permissions) and run it again" in out
    assert "Traceback" not in out
    record = run_record(sweep.dir)
    assert record["state"] == "finished" and record["ok"] is False and record["stopped"] == line
    assert leftovers(sweep.dir) == []
    rows = read_arrow(sweep.dir, "trials", ["trial_key", "status"]).to_pylist()
    assert {r["status"] for r in rows} == {"completed"}  # a trial that could not write left no failed row

    remount(size="64m")
    summary = run_sweep(load_sweep(sweep.path), every=60, report=False)
    assert summary.ok and summary.completed == 10 and not summary.stopped
    res = load(sweep.dir)
    assert sorted(res.trials.trial_key) == sorted(t.key for t in sweep.trials)  # each exactly once
    assert len(read_arrow(sweep.dir, "trials", ["trial_key"])) == 10  # no row of a discarded attempt
    store = Store(sweep.dir)
    for t in res.trials.itertuples():  # attempts count only real ones: no gaps, the last one completed
        markers = store.attempts(t.trial_key)
        assert [m["attempt"] for m in markers] == list(range(len(markers))) and t.attempt == len(markers) - 1
        assert len(markers) <= 2  # at most one attempt cut short by the stop, then the one that finished
    assert leftovers(sweep.dir) == []


def test_nearly_full_or_read_only_folder_is_refused_before_anything_starts(tmpfs, tmp_path, capsys):
    disk, remount = tmpfs
    results = disk / "results"
    results.mkdir()
    (results / "filler").write_bytes(os.urandom(1900 * 1024))  # an empty file would still fit
    path = sweep_at(tmp_path, results, "nearly", seeds=1)
    assert main(["run", str(path), "--num-cpus", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == \
        [f"basin run: error: {path}: results: cannot write to {results}/nearly (No space left on device)"]
    assert leftovers(str(results)) == [] and sorted(os.listdir(results)) == ["filler", "nearly"]

    (results / "filler").unlink()
    remount(read_only=True)
    with pytest.raises(UserError, match=f"^{path}: results: cannot write to {results}/nearly "
                                         r"\(Read-only file system\)$"):
        run_sweep(load_sweep(path))


def test_run_over_an_unreadable_trials_file_and_checkpoint(ray_local, tmp_path, capsys):
    path = sweep_at(tmp_path, tmp_path / "results", "resume", seeds=1)
    sweep = load_sweep(path)
    assert run_sweep(sweep, every=60, report=False, compact=False).ok
    victim = sweep.trials[0]
    trials_file = Path(sweep.dir, "trials", f"{victim.key}-a0.parquet")
    checkpoint = Path(sweep.dir, "checkpoints", f"{victim.key}.pt")
    for f in (trials_file, checkpoint):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    capsys.readouterr()

    assert main(["run", str(path), "--strict"]) == 2
    bad_rows = f"{trials_file}: unreadable Parquet file (ArrowInvalid: Parquet magic bytes not found in footer)"
    assert capsys.readouterr().err.splitlines() == [f"basin run: error: {bad_rows}"]

    summary = run_sweep(load_sweep(path), every=60, report=False)
    out, err = capsys.readouterr()
    assert summary.ok and summary.skipped == 1 and summary.ran == 1
    assert f"basin: warning: {bad_rows}; skipped" in err.splitlines()
    ckpt_line = (f"[resume] warning: {checkpoint}: unreadable checkpoint file (BadZipFile: File is not a zip "
                 f"file); {victim.name} starts over")
    assert ckpt_line in out.splitlines()
    assert Path(f"{checkpoint}.unreadable").exists() and trials_file.exists()  # kept, never read again
    res = load(sweep.dir)
    assert sorted(res.trials.trial_key) == sorted(t.key for t in sweep.trials)
    row = res.trials.set_index("trial_key").loc[victim.key]
    assert row.status == "completed" and row.attempt == 1
    assert Store(sweep.dir).attempts(victim.key)[1]["resumed_from_epoch"] == 0  # started over
