"""Unreadable results files on real Parquet: a truncated or bit-flipped file is named in one line and left out
by every reader (`basin status`, `analysis.load`, `basin analyze`, `basin compact`), `--strict` refuses with
that line and writes nothing, one bad sweep never hides the others, and compact never leaves a temp file nor
deletes what it could not read. (The run's side, with Ray: tests/test_storage_faults.py.)"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from synthetic_results import write_study

import analysis
from orchestrator.cli import main
from trainers.config import make_config
from trainers.folder import Folder, UnreadableFile
from trainers.results import trial_row

TRUNCATED = "unreadable Parquet file (ArrowInvalid: Parquet magic bytes not found in footer)"


def write_sweep_folder(folder: Path, sweep: str, seeds: int) -> list[str]:
    """One file per trial and table, as trials write them; returns the trial keys."""
    keys = []
    for s in range(seeds):
        cfg = make_config({"seed": s, "epochs": 2})
        Folder(str(folder)).write_tables({
            "epochs": [{"epoch": e, "train_loss": 1.0 / e} for e in (1, 2)],
            "evals": [{"epoch": 2, "split": "test", "point": "point", "kind": "point", "accuracy": 0.5 + s / 100}],
            "trials": [trial_row(cfg.to_dict(), name=f"seed={s}", status="completed", main_point="point")],
        }, sweep, cfg.key(), 0)
        keys.append(cfg.key())
    (folder / "sweep.yaml").write_text(f"name: {sweep}\nbase: {{epochs: 2}}\naxes:\n  seed: {list(range(seeds))}\n")
    return keys


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path: Path) -> None:
    """Flip bytes in the middle of the data (a page): only the page checksums can tell."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two sweeps; in `bad`, one trial's trials file is truncated and another trial's evals file bit-flipped."""
    r = tmp_path / "results"
    write_sweep_folder(r / "good", "good", 2)
    keys = write_sweep_folder(r / "bad", "bad", 3)
    truncate(r / "bad" / "trials" / f"{keys[0]}-a0.parquet")
    flip(r / "bad" / "evals" / f"{keys[1]}-a0.parquet")
    return r


def test_status_names_the_bad_file_and_lists_every_sweep(root: Path, capsys) -> None:
    truncated = next(p for p in (root / "bad" / "trials").iterdir() if p.read_bytes()[-4:] != b"PAR1")
    assert main(["status", str(root)]) == 0
    out, err = capsys.readouterr()
    rows = {ln.split()[0]: ln.split()[1:5] for ln in out.splitlines()[1:]}
    assert rows == {"bad": ["2", "0", "0", "3"], "good": ["2", "0", "0", "2"]}  # the bad trial is not counted done
    assert err.splitlines() == [f"basin: warning: {truncated}: {TRUNCATED}; skipped"]

    assert main(["status", "--strict", str(root)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"basin status: error: {truncated}: {TRUNCATED}"]


def test_load_leaves_out_and_reports_what_it_could_not_read(root: Path, capsys) -> None:
    r = analysis.load(str(root / "bad"))
    assert len(r.trials) == 2 and len(r.evals) == 1 and len(r.epochs) == 4  # never mixed in
    truncated, flipped = sorted(r.skipped, key=lambda ln: "evals" in ln)
    assert truncated.endswith(TRUNCATED) and "/trials/" in truncated
    assert "/evals/" in flipped and "unreadable Parquet file (" in flipped and "checksum" in flipped.lower()
    err = capsys.readouterr().err.splitlines()
    assert err == [f"basin: warning: {line}; skipped" for line in r.skipped]  # one line each, once
    with pytest.raises(UnreadableFile, match=r"/trials/.*" + re.escape(TRUNCATED)):
        _ = analysis.load(str(root / "bad"), strict=True).trials


def test_analyze_skips_a_bad_file_and_strict_refuses_before_writing(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "results" / "synth"
    write_study(sweep, variants=("point", "line"), label_noise=(0.0,), batchnorm=(True,), lr=(0.1,), seeds=3)
    good = analysis.load(str(sweep))
    copy = sweep / "evals" / "zz-extra.parquet"  # a bad file beside good ones: its rows must not appear
    shutil.copy(sweep / "evals" / "part-0.parquet", copy)
    truncate(copy)
    out = tmp_path / "report"
    assert main(["analyze", str(sweep), "--out", str(out), "--strict"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"basin analyze: error: {copy}: {TRUNCATED}"]
    assert not out.exists()
    assert main(["analyze", str(sweep), "--out", str(out)]) == 0
    assert f"basin: warning: {copy}: {TRUNCATED}; skipped" in capsys.readouterr().err.splitlines()
    assert "1 unreadable file(s) left out" in (out / "synth" / "index.html").read_text()
    assert analysis.load(str(sweep)).evals.equals(good.evals)


def test_compact_merges_the_rest_and_keeps_the_bad_files(root: Path, capsys) -> None:
    bad = root / "bad"
    before = files(bad)
    assert main(["compact", "--strict", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("basin compact: error: ")
    assert files(bad) == before  # refused before writing anything

    expected = analysis.load(str(bad))
    assert main(["compact", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "2 unreadable file(s) left as they are" in out and "epochs 3 files -> 1 (6 rows)" in out
    after = files(bad)
    unreadable = [k for k in before if k.startswith(("trials/", "evals/")) and before[k] == after.get(k)]
    assert len(unreadable) == 2  # byte for byte where they were
    assert not [k for k in after if k.endswith(".tmp")]
    assert sorted(k.split("/")[0] for k in after if k.endswith(".parquet")) == \
        ["epochs", "evals", "evals", "trials", "trials"]
    r = analysis.load(str(bad))
    assert r.trials.equals(expected.trials) and r.evals.equals(expected.evals)
