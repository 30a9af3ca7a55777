"""The results schema (one for every study), atomic Parquet writes, and the sinks a trial reports to.

Layout of a results folder: `<root>/<table>/<file>.parquet` for each table below. A trial writes one file
per table when it finishes (few, larger files; `compact` merges them further). Every row carries
`sweep`, `trial_key` (stable hash of the trial's config) and `attempt`; readers keep the latest
completed attempt of each trial, so a retried trial never counts twice. The tables themselves are in
trainers/schema.py (no torch, so analysis can read them cheaply); docs/schema.md describes them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainers.schema import ID, SCHEMAS, TABLES

__all__ = ["ID", "SCHEMAS", "TABLES", "FolderSink", "Sink", "load_state", "save_state", "to_arrow", "trial_row",
           "write_atomic", "write_rows", "write_tables"]

def _column(rows: list[dict[str, Any]], name: str) -> list[Any]:
    out = []
    for r in rows:
        v = r.get(name)
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().flatten().tolist()
        out.append(v)
    return out


def to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts) to an Arrow table of the table's schema; missing columns become nulls."""
    schema = SCHEMAS[table]
    return pa.Table.from_arrays([pa.array(_column(rows, f.name), f.type) for f in schema], schema=schema)


def write_atomic(table: pa.Table, path: str | Path) -> None:
    """Write Parquet to a temp name beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_rows(root: str | Path, table: str, rows: list[dict[str, Any]], name: str) -> None:
    if rows:
        write_atomic(to_arrow(table, rows), Path(root) / table / f"{name}.parquet")


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
        write_tables(self.root, tables, self.sweep, self.trial_key, self.attempt)

    def endpoint_states(self, cfg: Any) -> list[dict[str, Any]]:
        """The final states of the trials a connect trial names (trainers/references.py), from this folder's
        trials table and checkpoints. Raises references.EndpointError naming what is missing."""
        from trainers import references

        folder = self.root / "trials"
        rows = pq.ParquetDataset(folder, schema=SCHEMAS["trials"]).read(
            columns=["trial_key", "attempt", "status", "name", "config_json"]).to_pylist() if folder.is_dir() else []
        paths = [self.root / "checkpoints" / f"{k}.pt"
                 for k in references.resolve(cfg.to_dict(), references.completed_candidates(rows))]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise references.EndpointError(f"connect_endpoints: no checkpoint {', '.join(missing)} in {self.root}")
        return [load_state(p) for p in paths]


def write_tables(root: str | Path, tables: dict[str, list[dict[str, Any]]], sweep: str, trial_key: str,
                 attempt: int) -> None:
    """Stamp identity columns on every row and write one file per table. The trials row goes last, so a
    trial whose trials row exists has all its other rows on disk too."""
    ident = {"sweep": sweep, "trial_key": trial_key, "attempt": attempt}
    for table in sorted(tables, key=lambda t: t == "trials"):
        rows = [{**r, **ident} for r in tables[table]]
        write_rows(root, table, rows, f"{trial_key}-a{attempt}")


def save_state(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely: tensors and plain containers only (weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)

