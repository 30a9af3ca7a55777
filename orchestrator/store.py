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

import json
import os
import uuid
from typing import Any

from trainers.folder import Folder
from trainers.schema import FINAL_STATUSES


class Store(Folder):
    """One sweep's folder. Every method takes paths relative to it."""

    def check_writable(self) -> None:
        """Create the folder and write/remove a probe file; raises OSError when that fails."""
        probe = f".probe-{uuid.uuid4().hex}"
        self.write_bytes(probe, b"")
        self.delete(probe)

    def trial_status(self) -> dict[str, dict[str, Any]]:
        """Per trial key: the chosen attempt's status and attempt number, and how many attempts ended."""
        t = self.read_arrow("trials", ["trial_key", "attempt", "status", "finished_at", "diverged_epoch"]).to_pylist()
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

    def save_checkpoint(self, key: str, state: dict[str, Any]) -> None:
        """A trial's full state as checkpoints/<key>.pt (atomically)."""
        from trainers.results import state_bytes  # torch: only where trials run, not in the driver

        self.write_bytes(f"checkpoints/{key}.pt", state_bytes(state))

    def load_checkpoint(self, key: str) -> dict[str, Any] | None:
        from trainers.results import load_state

        data = self.read_bytes(f"checkpoints/{key}.pt")
        return None if data is None else load_state(data)
