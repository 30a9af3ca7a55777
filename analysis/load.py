"""Read a results folder (local path or a pyarrow-filesystem URI such as s3://bucket/prefix) into pandas.

Only the latest completed attempt of each trial is kept (or the latest attempt, if none completed), and
rows repeated by an interrupted compaction are dropped, so every number is counted once. A file that cannot
be read is named in one warning line and left out (`Results.skipped` lists those lines); `strict=True`
raises trainers.folder.UnreadableFile with that line instead.
"""

from __future__ import annotations

from functools import cached_property

import pandas as pd

from trainers.folder import Folder, read_arrow
from trainers.schema import FINAL_STATUSES

__all__ = ["ID", "NATURAL_KEYS", "Results", "chosen_attempts", "load", "read_arrow"]

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


def chosen_attempts(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its latest completed (or diverged) attempt, else its latest attempt."""
    if trials.empty:
        return trials
    t = trials.drop_duplicates(ID).assign(_done=lambda d: d["status"].isin(FINAL_STATUSES))
    t = t.sort_values(["_done", "attempt"]).groupby(["sweep", "trial_key"], as_index=False).tail(1)
    return t.drop(columns="_done").sort_values(["sweep", "name", "trial_key"]).reset_index(drop=True)


class Results:
    """The tables of a results folder as DataFrames; large tables load on first use."""

    def __init__(self, root: str, strict: bool = False):
        self.root = str(root)
        self.folder = Folder(self.root, strict=strict)

    @property
    def skipped(self) -> list[str]:
        """One line per unreadable file left out of what was read so far (path and error)."""
        return list(self.folder.skipped.values())

    @cached_property
    def trials(self) -> pd.DataFrame:
        return chosen_attempts(self.folder.read_arrow("trials").to_pandas())

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Rows of `name` that belong to the chosen attempt of each trial."""
        if name == "trials":
            return self.trials
        cols = None if columns is None else list(dict.fromkeys(ID + NATURAL_KEYS[name] + columns))
        df = self.folder.read_arrow(name, cols).to_pandas()
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


def load(results: str, strict: bool = False) -> Results:
    """`analysis.load("results/quickstart").evals` and so on, as pandas DataFrames; `strict`: refuse an
    unreadable file (UnreadableFile) rather than leave it out."""
    return Results(results, strict=strict)
