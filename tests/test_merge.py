"""Merging per-trial Parquet files while trials keep writing them (orchestrator.status.Merger, what `basin run`
does in the background and at its end), with readers reading all along: real Parquet, real threads. No
row lost or counted twice, no file a reader calls unreadable, nothing left but merged files."""

from __future__ import annotations

import threading
from pathlib import Path

from analysis.load import load
from orchestrator.status import Merger, compact_run
from orchestrator.store import Store
from trainers.config import make_config
from trainers.folder import Folder
from trainers.results import trial_row


def write_trial(root: Path, seed: int) -> None:
    cfg = make_config({"seed": seed, "epochs": 2})
    Folder(str(root)).write_tables({
        "epochs": [{"epoch": e, "train_loss": 1.0 / e} for e in (1, 2)],
        "trials": [trial_row(cfg.to_dict(), name=f"seed={seed}", status="completed")],
    }, "merge", cfg.key(), 0)


def test_merging_beside_writers_and_readers_keeps_every_row_once(tmp_path: Path) -> None:
    root = tmp_path / "merge"
    for s in range(20):
        write_trial(root, s)
    warnings: list[str] = []
    with Merger(Store(str(root)), warn=warnings.append, files=10, check_s=0.01) as merger:
        assert merger.merged_once.wait(60)
        writer = threading.Thread(target=lambda: [write_trial(root, s) for s in range(20, 80)])
        writer.start()
        seen = 0
        while writer.is_alive():  # read while files are written and merged away under the reader
            r = load(str(root))
            n = len(r.trials)
            assert r.skipped == [] and seen <= n <= 80 and r.trials.trial_key.is_unique
            assert len(r.epochs) == 2 * n
            seen = n
        writer.join()
    assert warnings == [] and merger.merged >= 20
    compact_run(Store(str(root)))  # the end of the run
    names = sorted(p.name for p in (root / "trials").iterdir())
    assert len(names) <= merger.merged // 10 + 2 and all(n.startswith("compact-") for n in names)
    r = load(str(root))
    assert len(r.trials) == 80 and r.trials.trial_key.is_unique and len(r.epochs) == 160
    assert not list(root.rglob("*.tmp")) and not list(root.rglob(".*"))
