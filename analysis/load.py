"""Read a results folder (local path or a pyarrow-filesystem URI such as s3://bucket/prefix) into pandas.

Only the latest completed attempt of each trial is kept (or the latest attempt, if none completed), and
rows repeated by an interrupted compaction are dropped, so every number is counted once.
"""

from __future__ import annotations

from functools import cached_property

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from trainers.schema import SCHEMAS

# What identifies a row within one attempt of one trial.
NATURAL_KEYS = {
    "trials": [],
    "epochs": ["epoch"],
    "evals": ["epoch", "split", "point", "corruption", "severity"],
    "predictions": ["epoch", "split", "point"],
    "weights": ["epoch", "point"],
    "probes": ["epoch", "point", "probe"],
}
ID = ["sweep", "trial_key", "attempt"]


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or a URI (s3://, gs://, file://)."""
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), str(root)


def read_arrow(root: str, table: str, columns: list[str] | None = None) -> pa.Table:
    """All files of one table as one Arrow table (empty, with the schema, when there are none)."""
    fs, path = filesystem(str(root))
    folder = f"{path.rstrip('/')}/{table}"
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        schema = SCHEMAS[table]
        return schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns]).empty_table()
    dataset = ds.dataset(folder, format="parquet", filesystem=fs, schema=SCHEMAS[table])
    return dataset.to_table(columns=columns)


def chosen_attempts(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its latest completed attempt, else its latest attempt."""
    if trials.empty:
        return trials
    t = trials.drop_duplicates(ID).assign(_done=lambda d: d["status"] == "completed")
    t = t.sort_values(["_done", "attempt"]).groupby(["sweep", "trial_key"], as_index=False).tail(1)
    return t.drop(columns="_done").sort_values(["sweep", "name", "trial_key"]).reset_index(drop=True)


class Results:
    """The tables of a results folder as DataFrames; large tables load on first use."""

    def __init__(self, root: str):
        self.root = str(root)

    @cached_property
    def trials(self) -> pd.DataFrame:
        return chosen_attempts(read_arrow(self.root, "trials").to_pandas())

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Rows of `name` that belong to the chosen attempt of each trial."""
        if name == "trials":
            return self.trials
        cols = None if columns is None else list(dict.fromkeys(ID + NATURAL_KEYS[name] + columns))
        df = read_arrow(self.root, name, cols).to_pandas()
        df = df.merge(self.trials[ID], on=ID, how="inner")
        return df.drop_duplicates(ID + NATURAL_KEYS[name], keep="last").reset_index(drop=True)

    @cached_property
    def epochs(self) -> pd.DataFrame:
        return self.table("epochs")

    @cached_property
    def evals(self) -> pd.DataFrame:
        return self.table("evals")

    @cached_property
    def predictions(self) -> pd.DataFrame:
        return self.table("predictions")

    @cached_property
    def weights(self) -> pd.DataFrame:
        return self.table("weights")

    @cached_property
    def probes(self) -> pd.DataFrame:
        return self.table("probes")


def load(results: str) -> Results:
    """`analysis.load("results/quickstart").evals` and so on, as pandas DataFrames."""
    return Results(results)
