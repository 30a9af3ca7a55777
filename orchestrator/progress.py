"""The driver's view of a running sweep: a Ray Tune callback that prints progress lines and feeds the
MLflow mirror from the Tune result stream (so the trials themselves never talk to MLflow)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray import tune

from orchestrator.tracking import EPOCH_METRICS, Mirror


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def one_line(text: str, limit: int = 300) -> str:
    """The last meaningful line of an error (a traceback ends with the exception)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:limit]


STORAGE_ERROR = "storage_error"  # runner.STORAGE_ERROR: a trial found the results folder full or read-only


class StorageStop(tune.Stopper):
    """Stops the whole sweep at the first trial that reports a full or read-only results folder: every other
    trial would fail alike, and each retry would leave more behind."""

    def __init__(self) -> None:
        self.hit = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.hit = self.hit or result.get("kind") == STORAGE_ERROR
        return self.hit

    def stop_all(self) -> bool:
        return self.hit


class SweepCallback(tune.Callback):
    """Counts trials, prints `[name] 12/48 done, 2 running, 0 failed, ETA 3m10s` every `every` seconds,
    and mirrors each trial into MLflow."""

    def __init__(self, name: str, total: int, mirror: Mirror | None, every: float = 5.0,
                 say: Callable[[str], None] = print, skipped: int = 0,
                 runs: dict[str, tuple[str, dict[str, str]]] | None = None):
        self.name, self.total, self.mirror, self.every, self.say = name, total, mirror, every, say
        self.runs = runs or {}  # trial key -> its MLflow run's name and tags
        self.skipped = skipped
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}       # trial key -> one-line error of its last attempt
        self.stopped = ""                      # the line of the storage fault that stopped the sweep
        self.retried = 0
        self.attempt: dict[str, int] = {}      # trial key -> attempt seen in its latest results
        self.resumed: dict[str, int] = {}
        self.timings = {"trial_s": 0.0, "parquet_s": 0.0, "checkpoint_s": 0.0, "report_s": 0.0}
        self.started = time.monotonic()
        self._last = 0.0
        self._running = 0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its run config; the mirror holds a thread
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__("", 0, None, say=lambda _: None)

    @staticmethod
    def _trial(trial: Any) -> dict[str, Any]:
        return trial.config["trial"]

    # -- Tune hooks --------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        if self.mirror:
            title, tags = self.runs.get(t["key"], (t["name"], {}))
            self.mirror.trial(t["key"], title, t["config"], {"basin.trial_name": t["name"], **tags})
            self.mirror.status(t["key"], "RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        t = self._trial(trial)
        key, kind = t["key"], result.get("kind")
        attempt = result.get("attempt")
        if attempt is not None and self.attempt.get(key) != attempt:
            self.attempt[key] = attempt
            if self.mirror:
                self.mirror.tags(key, {"basin.attempt": attempt,
                                       "basin.resumed_from_epoch": result.get("resumed_from_epoch", 0)})
        if kind == STORAGE_ERROR:
            if not self.stopped:
                self.stopped = result.get("error") or "results: cannot write"
                self.say(f"[{self.name}] {self.stopped}; stopping the sweep")
            self.failed[key] = self.stopped
            if self.mirror:
                self.mirror.tags(key, {"basin.last_error": self.stopped})
            return
        if kind == "final":
            self.timings["trial_s"] += float(result.get("seconds") or 0.0)
            for k, v in (result.get("io") or {}).items():
                self.timings[k] = self.timings.get(k, 0.0) + float(v)
        if not self.mirror:
            return
        self.mirror.times(key, start=result.get("started_at"), end=result.get("finished_at"))
        for row in result.get("epochs") or []:  # coalesced epoch rows (see runner.TuneSink)
            values = {name: row[k] for k, name in EPOCH_METRICS.items() if isinstance(row.get(k), (int, float))}
            self.mirror.metrics(key, values, step=int(row["epoch"]), epoch=True)
        if kind == "final":
            by_step: dict[int, dict[str, float]] = {}
            for name, value, step in result.get("metrics") or []:  # see tracking.eval_metrics
                by_step.setdefault(int(step), {})[name] = value
            for step, values in sorted(by_step.items()):
                self.mirror.metrics(key, values, step=step)
            self.mirror.tags(key, {"basin.status": "completed", "basin.seconds": f"{result.get('seconds', 0):.1f}"})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = self._trial(trial)["key"]
        if key in self.failed and self.failed[key] == self.stopped:  # it ended by reporting the fault
            if self.mirror:
                self.mirror.status(key, "FAILED")
            return
        self.done.add(key)
        self.failed.pop(key, None)
        if self.mirror:
            self.mirror.status(key, "FINISHED")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        self.retried += 1
        self.say(f"[{self.name}] {t['name']}: attempt {self.attempt.get(t['key'], '?')} failed "
                 f"({self._error(trial)}); retrying from its last checkpoint")
        if self.mirror:
            self.mirror.tags(t["key"], {"basin.last_error": self._error(trial)})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        self.failed[t["key"]] = self._error(trial)
        self.say(f"[{self.name}] {t['name']}: failed for good ({self.failed[t['key']]})")
        if self.mirror:
            self.mirror.tags(t["key"], {"basin.status": "failed", "basin.last_error": self.failed[t["key"]]})
            self.mirror.status(t["key"], "FAILED")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._running = sum(1 for t in trials if t.status == "RUNNING")
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.say(self.line())

    # -- text --------------------------------------------------------------------------------------------------
    def line(self) -> str:
        done, failed = len(self.done), len(self.failed)
        left = self.total - done - failed
        elapsed = time.monotonic() - self.started
        eta = f"ETA {fmt_seconds(elapsed / done * left)}" if done and left else ("ETA ?" if left else "")
        skipped = f" (+{self.skipped} from earlier runs)" if self.skipped else ""
        return (f"[{self.name}] {done}/{self.total} done{skipped}, {self._running} running, {failed} failed, "
                f"{fmt_seconds(elapsed)} elapsed" + (f", {eta}" if eta else ""))

    @staticmethod
    def _error(trial: Any) -> str:
        try:
            err = trial.get_error()
        except Exception:
            err = None
        return one_line(str(err) if err is not None else "unknown error")

