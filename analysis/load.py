"""Read a results folder (local path or a pyarrow-filesystem URI such as s3://bucket/prefix) into pandas.

Only the latest completed attempt of each trial is kept (or the latest attempt, if none completed), and
rows repeated by an interrupted compaction are dropped, so every number is counted once.
"""

from __future__ import annotations

from functools import cached_property

import pandas as pd

from trainers.folder import read_arrow
from trainers.schema import FINAL_STATUSES

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
