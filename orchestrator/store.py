"""A sweep's results folder, local or a URI (s3://…): what the orchestrator keeps there besides the Parquet
tables (trainers/folder.py reads and writes those, and every file here, atomically).

    <results>/<sweep>/sweep.yaml                  the sweep file of the latest run
    <results>/<sweep>/<table>/<key>-a<N>.parquet  trials, epochs, evals, predictions, weights
    <results>/<sweep>/checkpoints/<key>.pt        latest full state of each trial (resume across runs)
    <results>/<sweep>/attempts/<key>.a<N>.json    one marker per attempt started: numbers attempts
    <results>/<sweep>/runs/<time>.json            what each `basin run` did (counts, time, MLflow gaps)
    <results>/<sweep>/report/                     the report of the latest run (basin analyze)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
import zipfile
from typing import Any

import pyarrow.fs as pafs

from trainers.folder import Folder, unreadable
from trainers.schema import FINAL_STATUSES, TABLES

PROBE_BYTES = 1 << 20  # the writable check's probe: about one checkpoint of a small model
# Errors that say the results folder cannot take more writes: the sweep stops rather than fail every trial.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def storage_fault(e: BaseException | None) -> OSError | None:
    """The OSError behind `e` (itself, its cause or context) that says storage is full or not writable."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def storage_line(folder: str, e: OSError) -> str:
    """The one line a storage fault is reported by."""
    reason = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    return f"results: cannot write to {folder} ({reason})"


class Store(Folder):
    """One sweep's folder. Every method takes paths relative to it."""

    def check_writable(self, size: int = PROBE_BYTES) -> None:
        """Create the folder and write/remove a probe file of `size` bytes; raises OSError when that fails. Not
        empty: creating an empty file succeeds on a full disk."""
        probe = f".probe-{uuid.uuid4().hex}"
        self.write_bytes(probe, os.urandom(size))
        self.delete(probe)

    def clean_partial(self) -> int:
        """Remove what writes cut short left behind (a local folder; an object store has no partial files):
        temp files of atomic writes and empty attempt markers. Only while nothing writes here (no run
        going on). Returns how many files it removed."""
        if not self.local:
            return 0
        removed = 0
        for entry in self.fs.get_file_info(pafs.FileSelector(self.path(), recursive=True, allow_not_found=True)):
            name = entry.base_name
            tmp = name.startswith(".") and name.endswith(".tmp")
            empty_marker = entry.path.startswith(self.path("attempts/")) and name.endswith(".json") and entry.size == 0
            if entry.type == pafs.FileType.File and (tmp or empty_marker):
                with contextlib.suppress(OSError):
                    self.fs.delete_file(entry.path)
                    removed += 1
        return removed

    def trial_status(self) -> dict[str, dict[str, Any]]:
        """Per trial key: the chosen attempt's status and attempt number, and how many attempts ended."""
        t = self.read_arrow("trials", ["trial_key", "attempt", "status", "finished_at", "diverged_epoch",
                                     "at_chance", "chance_accuracy"]).to_pylist()
        out: dict[str, dict[str, Any]] = {}
        for row in sorted(t, key=lambda r: (r["status"] in FINAL_STATUSES, r["attempt"])):
            prev = out.get(row["trial_key"], {})
            out[row["trial_key"]] = {**row, "ended": prev.get("ended", 0) + 1}
        return out

    def completed(self) -> set[str]:
        return {k for k, r in self.trial_status().items() if r["status"] == "completed"}

    # -- attempts and checkpoints ------------------------------------------------------------------------
    def claim_attempt(self, key: str, info: dict[str, Any]) -> int:
        """The next attempt number of trial `key`, recorded by a marker file. One trial key runs in one place
        at a time (Tune runs it once; retries are sequential), so the first free number is ours; locally
        O_EXCL makes that race-free anyway."""
        n = 0
        while True:
            rel = f"attempts/{key}.a{n}.json"
            data = json.dumps({**info, "attempt": n}).encode()
            if self.local:
                path = self.path(rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    n += 1
                    continue
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                except OSError:  # a full disk: no empty marker left to count as an attempt
                    with contextlib.suppress(OSError):
                        os.remove(path)
                    raise
                return n
            if not self.exists(rel):
                self.write_bytes(rel, data)
                return n
            n += 1

    def discard_attempt(self, key: str, attempt: int) -> None:
        """Remove every file of an attempt that recorded nothing (its rows could not all be written): its
        partial rows and its marker, so the next attempt takes its number."""
        for rel in [f"{t}/{key}-a{attempt}.parquet" for t in TABLES] + [f"attempts/{key}.a{attempt}.json"]:
            with contextlib.suppress(OSError):
                self.delete(rel)

    def attempts(self, key: str) -> list[dict[str, Any]]:
        """The markers of trial `key`, in attempt order."""
        out, n = [], 0
        while (data := self.read_bytes(f"attempts/{key}.a{n}.json")) is not None:
            try:
                out.append(json.loads(data or b"{}"))
            except ValueError:  # cut short by a full disk: the attempt happened, its details are lost
                out.append({"attempt": n})
            n += 1
        return out

    def save_checkpoint(self, key: str, state: dict[str, Any]) -> None:
        """A trial's full state as checkpoints/<key>.pt (atomically)."""
        from trainers.results import state_bytes  # torch: only where trials run, not in the driver

        self.write_bytes(f"checkpoints/{key}.pt", state_bytes(state))

    def unreadable_checkpoint(self, key: str) -> str | None:
        """The line naming checkpoints/<key>.pt when it exists but cannot be read, else None. torch.save writes a
        zip: reading its directory (at the end) finds a truncated file without torch and without reading it all
        (the worker's torch.load checks the rest)."""
        path = self.path(f"checkpoints/{key}.pt")
        try:
            with self.fs.open_input_file(path) as f:
                zipfile.ZipFile(f).close()
        except FileNotFoundError:
            return None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            return unreadable(path, "checkpoint", e)
        return None

    def set_aside_checkpoint(self, key: str) -> None:
        """checkpoints/<key>.pt -> <key>.pt.unreadable: kept for a look, never read again."""
        self.fs.move(self.path(f"checkpoints/{key}.pt"), self.path(f"checkpoints/{key}.pt.unreadable"))

    def load_checkpoint(self, key: str) -> dict[str, Any] | None:
        from trainers.results import load_state

        data = self.read_bytes(f"checkpoints/{key}.pt")
        return None if data is None else load_state(data)
