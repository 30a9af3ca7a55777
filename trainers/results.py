"""The sinks a trial reports to, a trials-table row, and checkpoints (torch.save with weights_only loading).

The results format itself (the tables' schemas, Parquet reading and writing, local or on an object store)
lives in trainers/schema.py and trainers/folder.py, which import no torch. Every row carries `sweep`,
`trial_key` (stable hash of the trial's config) and `attempt`; readers keep the latest completed attempt of
each trial, so a retried trial never counts twice.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Protocol

import torch

from trainers.folder import Folder, read_arrow, write_tables

__all__ = ["FolderSink", "Sink", "load_state", "save_state", "state_bytes", "trial_row", "write_tables"]


def trial_row(cfg_dict: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A trials-table row: the config's fields as columns plus outcome fields."""
    row = {k: v for k, v in cfg_dict.items() if k != "extra"}
    row.update(extra=json.dumps(cfg_dict.get("extra", {}), sort_keys=True),
               config_json=json.dumps(cfg_dict, sort_keys=True, default=str))
    row.update(fields)
    return row


class Sink(Protocol):
    """Where a trial reports. `progress` is called after every epoch with that epoch's row and, when a
    checkpoint is due, the trial's full state (a dict of tensors and plain values); `finish` is called once
    with every row of the finished trial, keyed by table."""

    def progress(self, epoch_row: dict[str, Any], state: dict[str, Any] | None) -> None: ...

    def finish(self, tables: dict[str, list[dict[str, Any]]]) -> None: ...


class FolderSink:
    """The default sink: Parquet tables under `root` and the latest checkpoint at `root/checkpoints/`."""

    def __init__(self, root: str | Path, sweep: str = "", trial_key: str = "", attempt: int = 0,
                 name: str = "", verbose: bool = False):
        self.root, self.sweep, self.trial_key, self.attempt = Path(root), sweep, trial_key, attempt
        self.name, self.verbose = name or trial_key, verbose

    @property
    def checkpoint_path(self) -> Path:
        return self.root / "checkpoints" / f"{self.trial_key}.pt"

    def progress(self, epoch_row: dict[str, Any], state: dict[str, Any] | None) -> None:
        if self.verbose:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in epoch_row.items() if v is not None), flush=True)
        if state is not None:
            save_state(state, self.checkpoint_path)

    def finish(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        tables = {**tables, "trials": [{**r, "name": self.name} for r in tables["trials"]]}
        write_tables(str(self.root), tables, self.sweep, self.trial_key, self.attempt)

    def endpoint_states(self, cfg: Any) -> list[dict[str, Any]]:
        """The final states of the trials a connect trial names (trainers/references.py), from this folder's
        trials table and checkpoints. Raises references.EndpointError naming what is missing."""
        from trainers import references

        rows = read_arrow(str(self.root), "trials",
                          columns=["trial_key", "attempt", "status", "name", "config_json"]).to_pylist()
        paths = [self.root / "checkpoints" / f"{k}.pt"
                 for k in references.resolve(cfg.to_dict(), references.completed_candidates(rows))]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise references.EndpointError(f"connect_endpoints: no checkpoint {', '.join(missing)} in {self.root}")
        return [load_state(p) for p in paths]


def state_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """torch.save, written atomically like every results file (trainers.folder)."""
    path = Path(path)
    Folder(str(path.parent)).write_bytes(path.name, state_bytes(state))


def load_state(source: str | Path | bytes) -> dict[str, Any]:
    """Load a checkpoint (a file or its bytes) safely: tensors and plain containers only (weights_only=True)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    return torch.load(source, map_location="cpu", weights_only=True)

