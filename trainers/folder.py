"""A results folder, local or on an object store (s3://bucket/prefix, gs://, hdfs://): the one place that reads
and writes the results format (trainers/schema.py, docs/schema.md). Imports no torch, so the orchestrator's
driver and analysis use it as cheaply as a trial does.

    <root>/<table>/<trial key>-a<attempt>.parquet   one file per table and trial attempt (compaction merges them)

Writes are atomic: on a local disk a file is written under a temp name beside its target and renamed; on
an object store a single PUT already is (the object appears whole or not at all), so files go straight to
their final name there. Readers therefore never see half a file.

A file that cannot be read anyway (truncated by a disk, corrupted in a copy) is named in one line on stderr
and left out of what a read returns, never mixed in; a strict Folder raises UnreadableFile with that line
instead. Pages carry CRC32 checksums, checked on read, so flipped bits are caught too.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainers.schema import SCHEMAS

__all__ = ["Folder", "UnreadableFile", "filesystem", "is_uri", "read_arrow", "to_arrow", "unreadable", "write_tables"]

# Page checksums: written with every file (parquet_options), verified on every read (a CRC32 per page).
PARQUET_FORMAT = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True))


def parquet_options(schema: pa.Schema, one_trial: bool = True) -> dict[str, Any]:
    """How results files are written. zstd; a CRC32 per page (checked on read); floats (probabilities above
    all) byte-stream-split and never dictionary-encoded: 3.3x faster to read and 9% smaller than pyarrow's
    defaults on 10,000-example probability lists (measured on the 10,000-trial benchmark's file). A trial's
    own small files also go without dictionaries, column statistics and the Arrow schema: for one row those
    only fatten the footer, which a reader of 10,000 such files parses 10,000 times (3x the read time)."""
    floats = [f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name for f in schema
              if pa.types.is_floating(f.type.value_type if pa.types.is_list(f.type) else f.type)]
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    opts: dict[str, Any] = dict(compression="zstd", write_page_checksum=True, use_byte_stream_split=floats)
    if one_trial:
        return {**opts, "use_dictionary": False, "write_statistics": False, "store_schema": False}
    return {**opts, "use_dictionary": strings}


SMALL_BATCH_BYTES = 64 << 10  # a batch this large is kept as read (coalesce)
MERGE_BATCHES = 256      # small batches merged into one chunk at a time
SCAN_FILES = 256         # files per dataset scan (scan_batches)


class UnreadableFile(Exception):
    """A results file that cannot be read; the message is one line naming it (see `unreadable`)."""


def unreadable(path: str, kind: str, err: BaseException) -> str:
    """`<path>: unreadable <kind> file (<error type>: <first line of the error>)`: the line every reader prints."""
    text = str(err).strip()
    text = text.rsplit(f"{path}'", 1)[-1].lstrip("': ") if path in text else text  # the path is said once
    first = (text.splitlines() or [""])[0].split(". ")[0].rstrip(".")[:200]
    return f"{path}: unreadable {kind} file ({type(err).__name__}: {first})"


def warn_skipped(line: str) -> None:
    print(f"basin: warning: {line}; skipped", file=sys.stderr, flush=True)


def is_uri(path: str) -> bool:
    return "://" in str(path)


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path on it, for a local folder or a URI (s3://, gs://, file://)."""
    if is_uri(root):
        return pafs.FileSystem.from_uri(str(root))
    return pafs.LocalFileSystem(), str(root)


def _value(v: Any, is_list: bool) -> Any:
    """A plain Python value for Arrow. Tensors and arrays are duck-typed (anything with .tolist()), so this
    module needs no torch: list columns take them flattened, scalar columns take .item()."""
    if hasattr(v, "detach"):
        v = v.detach().cpu()
    if is_list and hasattr(v, "tolist") and hasattr(v, "flatten"):
        return v.flatten().tolist()
    if not is_list and hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return v.item()
    return v


def to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts) to an Arrow table of the table's schema; missing columns become nulls."""
    schema = SCHEMAS[table]
    cols = []
    for f in schema:
        is_list = pa.types.is_list(f.type)
        cols.append(pa.array([_value(r.get(f.name), is_list) for r in rows], f.type))
    return pa.Table.from_arrays(cols, schema=schema)


class Folder:
    """One folder of results. Every method takes paths relative to it ('trials/x.parquet')."""

    def __init__(self, root: str, strict: bool = False, warn: Callable[[str], None] = warn_skipped):
        self.root = str(root).rstrip("/") or "/"
        self.local = not is_uri(self.root)
        self._fs: tuple[pafs.FileSystem, str] | None = None
        self.strict = strict  # raise UnreadableFile instead of skipping an unreadable file
        self.warn = warn
        self.skipped: dict[str, str] = {}  # path -> the line naming it, for every file left out so far

    def skip(self, path: str, kind: str, err: BaseException) -> None:
        """Leave out an unreadable file: say so once (its one line), or raise it when strict."""
        line = unreadable(path, kind, err)
        if self.strict:
            raise UnreadableFile(line) from None
        if path not in self.skipped:
            self.skipped[path] = line
            self.warn(line)

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = filesystem(self.root)
        return self._fs[0]

    def path(self, rel: str = "") -> str:
        """The path of `rel` on self.fs."""
        _ = self.fs
        base = self._fs[1].rstrip("/")
        return f"{base}/{rel}" if rel else base

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_dir(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory

    def list(self, rel: str = "") -> list[pafs.FileInfo]:
        """Entries directly under `rel` (none when it does not exist), hidden ones (.name) left out."""
        if not self.is_dir(rel):
            return []
        return sorted((e for e in self.fs.get_file_info(pafs.FileSelector(self.path(rel)))
                       if not e.base_name.startswith(".")), key=lambda e: e.base_name)

    @contextlib.contextmanager
    def open_atomic(self, rel: str) -> Iterator[pa.NativeFile]:
        """A stream whose file appears, whole, at `rel` when the block ends without an error (see the module
        docstring); after an error nothing is left at `rel`."""
        target = self.path(rel)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        head, _, name = target.rpartition("/")
        tmp = f"{head}/.{name}.{uuid.uuid4().hex}.tmp" if self.local else target
        try:
            with self.fs.open_output_stream(tmp) as f:
                yield f
        except BaseException:
            if self.local:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(tmp)
            raise
        if self.local:
            self.fs.move(tmp, target)

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_atomic(rel) as f:
            f.write(data)

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes; None when it does not exist or cannot be read."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def delete(self, rel: str) -> None:
        self.fs.delete_file(self.path(rel))

    # -- Parquet ------------------------------------------------------------------------------------------------
    def write_table(self, rel: str, table: pa.Table) -> None:
        """One Parquet file (a trial's rows of one table), atomically; see parquet_options."""
        with self.open_atomic(rel) as f:
            pq.write_table(table, f, **parquet_options(table.schema))

    def write_tables(self, tables: dict[str, list[dict[str, Any]]], sweep: str, trial_key: str,
                     attempt: int) -> None:
        """Stamp identity columns on every row and write one file per table. The trials row goes last, so a
        trial whose trials row exists has all its other rows stored too."""
        ident = {"sweep": sweep, "trial_key": trial_key, "attempt": attempt}
        for table in sorted(tables, key=lambda t: t == "trials"):
            rows = [{**r, **ident} for r in tables[table]]
            if rows:
                self.write_table(f"{table}/{trial_key}-a{attempt}.parquet", to_arrow(table, rows))

    def files(self, table: str) -> list[str]:
        """The paths of a table's Parquet files (temp files of writes in progress left out)."""
        return [e.path for e in self.list(table) if e.type == pafs.FileType.File and e.base_name.endswith(".parquet")]

    def read_arrow(self, table: str, columns: list[str] | None = None, files: list[str] | None = None,
                   keep: Callable[[pa.RecordBatch], pa.Array] | None = None) -> pa.Table:
        """All files of one table (or the given ones) as one Arrow table (empty, with the schema, when there are
        none). One threaded scan of only the wanted columns; when it fails, file by file, leaving out (skip)
        the ones that cannot be read. `keep`: a row mask per batch, applied as batches arrive (so rows not
        wanted are never all held at once); a batch kept whole is not copied."""
        schema = SCHEMAS[table] if columns is None else pa.schema([SCHEMAS[table].field(c) for c in columns])
        listed = files is None
        for _ in range(3):  # a file merged away (basin compact) since the listing: list again
            files = [f for f in (self.files(table) if listed else files) if f not in self.skipped]
            if not files:
                return schema.empty_table()
            try:
                return self._scan(table, files, columns, keep)
            except FileNotFoundError:
                if not listed:
                    raise
            except (pa.ArrowException, OSError):
                break  # some file is bad: find it below

        def one(f: str) -> pa.Table | BaseException:
            try:
                return self._scan(table, [f], columns, keep)
            except (pa.ArrowException, OSError) as e:
                return e

        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(one, files))
        for f, part in zip(files, parts, strict=True):
            if isinstance(part, BaseException):
                self.skip(f, "Parquet", part)
        return pa.concat_tables([p for p in parts if isinstance(p, pa.Table)] or [schema.empty_table()])

    def verify(self, table: str, files: list[str] | None = None) -> None:
        """Read every page of a table's files (or the given ones) without keeping any: skips, or raises when
        strict, the files that cannot be read."""
        self.read_arrow(table, files=files, keep=lambda b: pa.repeat(False, b.num_rows))

    def _scan(self, table: str, files: list[str], columns: list[str] | None,
              keep: Callable[[pa.RecordBatch], pa.Array] | None = None) -> pa.Table:
        schema = SCHEMAS[table] if columns is None else pa.schema([SCHEMAS[table].field(c) for c in columns])

        def kept(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                mask = keep(batch)
                yield batch if pc.all(mask).as_py() else batch.filter(mask)

        batches = scan_batches(files, self.fs, SCHEMAS[table], columns)
        parts = list(coalesce(batches if keep is None else kept(batches), schema))
        return pa.concat_tables(parts) if parts else schema.empty_table()


def scan_batches(files: list[str], fs: pafs.FileSystem, schema: pa.Schema, columns: list[str] | None = None,
                 batch_size: int = 131072) -> Iterator[pa.RecordBatch]:
    """The files' rows as batches (only `columns`), in file order, from threaded dataset scans of SCAN_FILES
    files at a time: a scan holds ~230 KB for every file it has opened until it ends, so one scan of 2,000
    one-row files peaked at 460 MB, and in groups of 256 at 120 MB (8.5 s against 7.7 s)."""
    for i in range(0, len(files), SCAN_FILES):
        dataset = ds.dataset(files[i:i + SCAN_FILES], format=PARQUET_FORMAT, filesystem=fs, schema=schema)
        yield from dataset.to_batches(columns=columns, batch_size=batch_size, use_threads=True)


def coalesce(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.Table]:
    """Batches read from many files as tables, the small ones merged into one chunk per MERGE_BATCHES. Every
    file gives at least one batch, and each column of a batch has its own small buffers: 1,000 one-row trial
    files held as 1,000 chunks of the trials table's 101 columns take ~200 MB, as one chunk well under 1 MB.
    Large batches (a compacted file's: a predictions row alone is 400 KB at 10,000 test examples) pass as
    they are, not copied; rows keep their order."""
    small: list[pa.RecordBatch] = []
    for batch in batches:
        if batch.nbytes >= SMALL_BATCH_BYTES:
            if small:
                yield pa.Table.from_batches(small, schema).combine_chunks()
                small = []
            yield pa.Table.from_batches([batch], schema)
        elif batch.num_rows:
            small.append(batch)
            if len(small) >= MERGE_BATCHES:
                yield pa.Table.from_batches(small, schema).combine_chunks()
                small = []
    if small:
        yield pa.Table.from_batches(small, schema).combine_chunks()


def write_tables(root: str, tables: dict[str, list[dict[str, Any]]], sweep: str, trial_key: str,
                 attempt: int) -> None:
    """Folder(root).write_tables(...)."""
    Folder(str(root)).write_tables(tables, sweep, trial_key, attempt)


def read_arrow(root: str, table: str, columns: list[str] | None = None, strict: bool = False) -> pa.Table:
    """Folder(root, strict).read_arrow(...)."""
    return Folder(str(root), strict=strict).read_arrow(table, columns)
