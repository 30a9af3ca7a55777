"""A sweep's results folder, local or a URI (s3://…): Parquet tables, checkpoints, attempt markers.

Local folders use trainers.results (temp file + rename). On object stores a single PUT is already atomic
(the object appears whole or not at all), so files are written straight to their final name there.

    <results>/<sweep>/sweep.yaml                  the sweep file of the latest run
    <results>/<sweep>/<table>/<key>-a<N>.parquet  trials, epochs, evals, predictions, weights
    <results>/<sweep>/checkpoints/<key>.pt        latest full state of each trial (resume across runs)
    <results>/<sweep>/attempts/<key>.a<N>.json    one marker per attempt started: numbers attempts
    <results>/<sweep>/runs/<time>.json            what each `basin run` did (counts, time, MLflow gaps)
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.load import filesystem, read_arrow


class Store:
    """One sweep's folder. Every method takes paths relative to it."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.local = "://" not in root
        self._fs: pafs.FileSystem | None = None

    @property
    def fs(self) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            self._fs, self._base = filesystem(self.root)
        return self._fs, self._base

    def path(self, rel: str) -> str:
        return f"{self.fs[1].rstrip('/')}/{rel}" if not self.local else os.path.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        if self.local:
            return os.path.exists(os.path.join(self.root, rel))
        fs, _ = self.fs
        return fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:
            path = Path(self.root, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return
        fs, _ = self.fs
        fs.create_dir(self.path(rel).rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(self.path(rel)) as f:
            f.write(data)

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            if self.local:
                return Path(self.root, rel).read_bytes()
            fs, _ = self.fs
            with fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def check_writable(self) -> None:
        """Create the folder and write/remove a probe file; raises OSError when that fails."""
        probe = f".probe-{uuid.uuid4().hex}"
        self.write_bytes(probe, b"")
        if self.local:
            os.remove(os.path.join(self.root, probe))
        else:
            self.fs[0].delete_file(self.path(probe))

    # -- Parquet --------------------------------------------------------------------------------------------
    def write_tables(self, tables: dict[str, list[dict[str, Any]]], sweep: str, key: str, attempt: int) -> None:
        """One file per table, the trials row last (see trainers.results.write_tables)."""
        from trainers import results as R  # torch: only where trials run, not in the driver

        if self.local:
            R.write_tables(self.root, tables, sweep, key, attempt)
            return
        ident = {"sweep": sweep, "trial_key": key, "attempt": attempt}
        for table in sorted(tables, key=lambda t: t == "trials"):
            rows = [{**r, **ident} for r in tables[table]]
            if rows:
                buf = io.BytesIO()
                pq.write_table(R.to_arrow(table, rows), buf, compression="zstd")
                self.write_bytes(f"{table}/{key}-a{attempt}.parquet", buf.getvalue())

    def trial_status(self) -> dict[str, dict[str, Any]]:
        """Per trial key: the chosen attempt's status and attempt number, and how many attempts ended."""
        t = read_arrow(self.root, "trials", ["trial_key", "attempt", "status", "finished_at"]).to_pylist()
        out: dict[str, dict[str, Any]] = {}
        for row in sorted(t, key=lambda r: (r["status"] == "completed", r["attempt"])):
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
                path = os.path.join(self.root, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    n += 1
                    continue
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return n
            if not self.exists(rel):
                self.write_bytes(rel, data)
                return n
            n += 1

    def attempts(self, key: str) -> list[dict[str, Any]]:
        """The markers of trial `key`, in attempt order."""
        out, n = [], 0
        while (data := self.read_bytes(f"attempts/{key}.a{n}.json")) is not None:
            out.append(json.loads(data or b"{}"))
            n += 1
        return out

    def save_checkpoint(self, state_file: str, key: str) -> None:
        """Copy a saved state file to checkpoints/<key>.pt (atomically)."""
        self.write_bytes(f"checkpoints/{key}.pt", Path(state_file).read_bytes())

    def load_checkpoint(self, key: str) -> dict[str, Any] | None:
        from trainers import results as R

        rel = f"checkpoints/{key}.pt"
        if self.local:
            path = os.path.join(self.root, rel)
            return R.load_state(path) if os.path.exists(path) else None
        data = self.read_bytes(rel)
        if data is None:
            return None
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.pt").write_bytes(data)
            return R.load_state(Path(d, "state.pt"))
