"""Feeding a sweep's trials to Ray Tune lazily (imported where Ray runs: it imports Ray)."""

from __future__ import annotations

import json
from typing import Any

from ray.tune.search import Searcher


class Feeder(Searcher):
    """Hands Ray Tune the sweep's trials (or packs) one at a time, in order, as Tune asks for them: Tune then
    creates a trial when it can start it, not all up front (a grid_search of 10,000 configs is expanded and
    registered before the first trial starts, at a cost that grows quadratically with the trials)."""

    def __init__(self, params: list[dict[str, Any]]):
        super().__init__()
        self.params, self.next = params, 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.next >= len(self.params):
            return self.FINISHED
        self.next += 1
        return {"trial": self.params[self.next - 1]}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # retries are Tune's (FailureConfig); results go to Parquet and MLflow, not here

    # Tune snapshots its searcher with the experiment; basin resumes from its results folder instead, so only
    # the position is kept (pickling every config at each snapshot would be O(trials) work each time).
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"next": self.next}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.next = json.load(f)["next"]
