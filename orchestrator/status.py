"""`basin status` (the sweeps under a results folder and their counts) and `basin compact` (merge a sweep's
many per-trial Parquet files). `basin ui` is in orchestrator/ui.py.

An unreadable Parquet file is named in one line and left out (trainers/folder.py); with --strict both
commands refuse with that line instead. One sweep folder that cannot be read at all is named and the others
are still listed."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.cli import UserError
from orchestrator.store import Store
from orchestrator.sweep import join, parse_sweep
from trainers.folder import coalesce, parquet_options, scan_batches
from trainers.schema import SCHEMAS, TABLES

COMPACT_ROW_GROUP_BYTES = 128 << 20
COMPACT_PREFIX = "compact-"


def _children(root: str) -> list[str]:
    folder = Store(root)
    if not folder.is_dir():
        raise UserError(f"{root}: no such results folder")
    return [e.base_name for e in folder.list() if e.type == pafs.FileType.Directory]


def is_sweep_dir(folder: str) -> bool:
    s = Store(folder)
    return s.exists("sweep.yaml") or s.exists("trials")


def sweep_dirs(root: str) -> list[str]:
    """`root` itself if it is a sweep's folder, else its sweep subfolders."""
    if is_sweep_dir(root):
        return [root.rstrip("/")]
    return [join(root, c) for c in _children(root) if is_sweep_dir(join(root, c))]


def saved_sweep(folder: str) -> Any:
    """The sweep file saved by the last `basin run`, parsed with paths pointing at this folder (the
    results folder may have moved since); None if absent or unreadable."""
    store = Store(folder)
    text = store.read_bytes("sweep.yaml")
    if text is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(text)
        parent, _, name = folder.rstrip("/").rpartition("/")
        sweep = parse_sweep({**data, "name": name}, f"{folder}/sweep.yaml", text.decode(), results=parent or ".")
        _ = sweep.trials
        return sweep
    except Exception:
        return None


def last_run_name(store: Store) -> str | None:
    """The file name of the newest record in runs/ (written by `basin run` at its start and end)."""
    try:
        entries = store.list("runs")
    except OSError:
        return None
    names = sorted(e.base_name for e in entries if e.base_name.endswith(".json"))
    return names[-1] if names else None


def last_run(store: Store) -> dict[str, Any] | None:
    """The newest record in runs/."""
    name = last_run_name(store)
    if name is None:
        return None
    data = store.read_bytes(f"runs/{name}")
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def run_state(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    if run.get("state") == "running":
        alive = False
        if run.get("host") == socket.gethostname():
            try:
                os.kill(int(run.get("pid", 0)), 0)
                alive = True
            except (OSError, ValueError):
                alive = False
        else:
            return "running?"  # another machine: cannot tell
        return "running" if alive else "interrupted"
    return "finished" if run.get("ok") else "incomplete"


def running(run: dict[str, Any] | None) -> bool:
    """Whether a run record is of a `basin run` still alive (on this machine; on another: cannot tell)."""
    return run_state(run) in ("running", "running?")


def sweep_status(folder: str, strict: bool = False) -> dict[str, Any]:
    store = Store(folder, strict=strict)
    status = store.trial_status()
    sweep = saved_sweep(folder)
    keys = [t.key for t in sweep.trials] if sweep else list(status)
    completed = sum(1 for k in keys if status.get(k, {}).get("status") == "completed")
    failed = sum(1 for k in keys if status.get(k, {}).get("status") == "failed")
    diverged = sum(1 for k in keys if status.get(k, {}).get("status") == "diverged")
    run = last_run(store)
    return {"sweep": folder.rstrip("/").rpartition("/")[2], "folder": folder, "completed": completed,
            "diverged": diverged, "failed": failed, "total": len(keys) if sweep else None,
            "attempts": sum(r["ended"] for r in status.values()),
            "state": run_state(run), "last_run": run.get("started_at") if run else None,
            "mlflow": sweep.mlflow if sweep else "", "mlflow_gap": (run or {}).get("mlflow_gap", "")}


def add_status_args(p: Any) -> None:
    p.add_argument("results", nargs="?", default="results", help="a results folder (or one sweep's folder)")
    p.add_argument("--json", action="store_true", help="one JSON object per sweep")
    p.add_argument("--strict", action="store_true", help="refuse when a results file cannot be read (default: "
                   "name it in one line and leave it out)")
    p.add_argument("--job", help="a job id from `basin submit`: its state and latest progress line instead")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                   help="with --job: the Ray dashboard, through the SSH tunnel")


def job_summary(job: str, address: str) -> int:
    """A submitted sweep's job state, where it writes, and the last progress line its driver printed."""
    from orchestrator.submit import job_client, job_status

    client = job_client(address)
    state = job_status(client, job)
    meta = client.get_job_info(job).metadata or {}
    print(f"job {job}: {state}  sweep {meta.get('basin_sweep', '?')}  results {meta.get('basin_results', '?')}")
    progress = [line for line in client.get_job_logs(job).splitlines() if line.startswith("[")]
    if progress:
        print(progress[-1])
    return 0


def cmd_status(args: Any) -> int:
    if args.job:
        return job_summary(args.job, args.address)
    rows = []
    for d in sweep_dirs(args.results):
        try:
            rows.append(sweep_status(d, strict=args.strict))
        except OSError as e:  # a folder that cannot be listed or read: say so, list the others
            if args.strict:
                raise UserError(f"{d}: cannot read ({e})") from None
            print(f"basin: warning: {d}: cannot read ({e}); skipped", file=sys.stderr)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print(f"{args.results}: no sweeps yet (run one: basin run sweeps/quickstart.yaml)")
        return 0
    width = max(5, *(len(r["sweep"]) for r in rows))
    print(f"{'SWEEP':<{width}}  {'DONE':>6}  {'DIVERGED':>8}  {'FAILED':>6}  {'TOTAL':>6}  {'STATE':<11}  "
          f"{'LAST RUN':<16}  FOLDER")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_run"])) if r["last_run"] else "-"
        total = "?" if r["total"] is None else r["total"]
        state = r["state"] + ("*" if r["mlflow_gap"] else "")
        print(f"{r['sweep']:<{width}}  {r['completed']:>6}  {r['diverged']:>8}  {r['failed']:>6}  {total:>6}  "
              f"{state:<11}  {when:<16}  {r['folder']}")
    for r in rows:
        if r["mlflow_gap"]:
            print(f"* {r['sweep']}: {r['mlflow_gap']}; fill it in: basin sync-mlflow {r['folder']}")
    return 0


# -- basin compact ----------------------------------------------------------------------------------------
def add_compact_args(p: Any) -> None:
    p.add_argument("sweep", help="a sweep's results folder (or a results folder: every sweep in it)")
    p.add_argument("--strict", action="store_true", help="refuse, writing nothing, when a file cannot be read "
                   "(default: name it in one line, merge the others and leave it where it is)")


def compact_table(folder: str | Store, table: str, trial_files_only: bool = False) -> tuple[int, int]:
    """Merge a table's files (or only its per-trial files, not earlier merges) into one, written atomically
    (trainers.folder), then delete the inputs. A crash in between leaves duplicates, which readers drop. A file
    that cannot be read is named (or refused, strict), never merged and never deleted; if one turns out bad
    while merging, nothing is written and the merge starts again without it."""
    store = folder if isinstance(folder, Store) else Store(folder)
    files = [f for f in store.files(table) if f not in store.skipped
             and not (trial_files_only and f.rpartition("/")[2].startswith(COMPACT_PREFIX))]
    if len(files) <= 1:
        return len(files), 0
    name = f"{COMPACT_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    try:
        rows = _merge(store, table, files, f"{table}/{name}")
    except (pa.ArrowException, OSError):  # some input is bad (open_atomic removed the partial output)
        store.verify(table, files)  # names (skips) or refuses the bad ones
        files = [f for f in files if f not in store.skipped]
        if len(files) <= 1:
            return len(files), 0
        rows = _merge(store, table, files, f"{table}/{name}")
    for f in files:
        store.fs.delete_file(f)
    return len(files), rows


def _merge(store: Store, table: str, files: list[str], rel: str) -> int:
    """Stream `files` into one new file `rel` (atomically: whole or absent); the rows written."""
    rows = 0
    with store.open_atomic(rel) as out, \
            pq.ParquetWriter(out, SCHEMAS[table], **parquet_options(SCHEMAS[table], one_trial=False)) as w:
        parts: list[pa.Table] = []
        size = 0
        for part in coalesce(scan_batches(files, store.fs, SCHEMAS[table], batch_size=4096), SCHEMAS[table]):
            parts.append(part)
            size += part.nbytes
            rows += part.num_rows
            if size >= COMPACT_ROW_GROUP_BYTES:
                w.write_table(pa.concat_tables(parts))
                parts, size = [], 0
        if parts:
            w.write_table(pa.concat_tables(parts))
    return rows


def give_memory_back() -> None:
    """Returns the driver's freed heap to the OS (glibc; elsewhere nothing). Reading many small Parquet files
    parses each footer through malloc: the memory is freed after, but glibc holds it between live objects,
    so each merge of a long sweep raised the driver's resident memory by ~100 MB for good."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def compact_run(store: Store) -> dict[str, tuple[int, int]]:
    """The end of `basin run`: each table's per-trial files merged into one file (per table, per run), so
    readers open a few files rather than one per trial; {table: (files, rows)} of the tables merged."""
    out = {}
    for table in TABLES:
        n, rows = compact_table(store, table, trial_files_only=True)
        if rows:
            out[table] = (n, rows)
    give_memory_back()
    return out


class Merger:
    """While a run goes on: every `check_s` seconds, once `files` per-trial files of the trials table have
    piled up, merge them (compact_run), so a reader (basin status, a killed run's re-run, analysis) never
    opens more than about that many small files. Safe beside writing trials: a merge takes the files it
    listed, each already whole (written under a temp name, renamed), and deletes only those."""

    def __init__(self, store: Store, warn: Any, files: int = 1000, check_s: float = 30.0):
        self.store, self.warn, self.files, self.check_s = store, warn, files, check_s
        self.merged = 0  # per-trial files merged so far
        self.merged_once = threading.Event()  # set after the first merge (tests wait on it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="basin-merger", daemon=True)

    def __enter__(self) -> Merger:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                trial_files = [f for f in self.store.files("trials")
                               if not f.rpartition("/")[2].startswith(COMPACT_PREFIX)]
                if len(trial_files) >= self.files:
                    self.merged += sum(n for n, _ in compact_run(self.store).values())
                    self.merged_once.set()
            except Exception as e:  # the per-trial files serve readers as well: say so once and stop trying
                self.warn(f"results not merged during the run ({type(e).__name__}: {e})")
                return


def cmd_compact(args: Any) -> int:
    folders = sweep_dirs(args.sweep)
    if not folders:
        raise UserError(f"{args.sweep}: no sweep results here")
    for folder in folders:
        store = Store(folder, strict=args.strict)
        if args.strict:  # refuse before writing anything
            for table in TABLES:
                store.verify(table)
        parts = []
        for table in TABLES:
            n, rows = compact_table(store, table)
            if rows:
                parts.append(f"{table} {n} files -> 1 ({rows} rows)")
        kept = f"; {len(store.skipped)} unreadable file(s) left as they are" if store.skipped else ""
        print(f"{folder}: " + ("; ".join(parts) if parts else "nothing to merge") + kept)
    return 0
