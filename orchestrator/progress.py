"""The driver's view of a running sweep: a Ray Tune callback that prints progress lines and feeds the
MLflow mirror from the Tune result stream (so the trials themselves never talk to MLflow)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any

from ray import tune

from orchestrator.packing import members
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


def error_text(err: Any, limit: int = 300) -> str:
    """Why a trial's attempt failed, in one line: the trial's own exception (type: message), or which worker
    died and how Ray saw it die (an actor's error has no traceback; its last line is only Ray's list of
    possible causes)."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(err, RayTaskError) and isinstance(err.cause, BaseException) and \
            not isinstance(err.cause, RayTaskError):
        err = err.cause
    if isinstance(err, RayActorError):
        text = " ".join(str(err).split())
        pid, ip = re.search(r"pid: (\d+)", text), re.search(r"ip: (\S+)", text)
        detail = re.search(r"Worker exit detail: (.*?)(?: There are some potential root causes|$)", text)
        where = ", ".join(x for x in (pid and f"pid {pid[1]}", ip and f"on {ip[1]}") if x)
        why = detail[1] if detail else one_line(str(err), limit)
        return f"{type(err).__name__}: the trial's worker process{f' ({where})' if where else ''} died: {why}"[:limit]
    if isinstance(err, BaseException):
        message = " ".join(one_line(str(err), limit).split())
        return f"{type(err).__name__}: {message}"[:limit] if message else type(err).__name__
    return one_line(str(err), limit) if err else ""


def trial_error(trial: Any) -> str:
    """The error of a Tune trial's latest failure. Tune writes it beside the trial's driver-side folder before
    it calls the callbacks (the copy in the storage path, Trial.get_error's, comes later): the exception as Ray
    pickled it, else its text."""
    import cloudpickle

    for path, read in ((trial.pickled_error_file, lambda f: error_text(cloudpickle.load(f))),
                       (trial.error_file, lambda f: one_line(f.read().decode(errors="replace")))):
        if path and os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    if text := read(f):
                        return text
            except Exception:  # an unreadable file: try the next source
                continue
    try:
        return one_line(str(trial.get_error() or "")) or "Ray Tune recorded no error for it"
    except Exception as e:
        return f"Ray Tune recorded no readable error for it ({type(e).__name__})"


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


def forget_results(trial: Any) -> None:
    """Drops Ray Tune's in-memory copies of a finished trial's results. Tune keeps every trial of a run to its
    end, each with its last result, a running min/max/mean and last-5/last-10 deques per numeric metric, JSON
    copies of these, and a reference to an object in Ray's store that nobody reads: ~80 KB per trial, 0.8 GB
    of driver memory at 10,000 trials. basin's results are in Parquet and MLflow, and it reads no metric
    back from Tune (only a failed trial's error, kept here)."""
    meta = trial.run_metadata
    meta.last_result, meta.metric_analysis, meta.metric_n_steps = {}, {}, {}
    trial._default_result_or_future = None  # Tune reads it only to place a trial still running
    trial.invalidate_json_state()


class SweepCallback(tune.Callback):
    """Counts trials, prints `[name] 12/48 done, 2 running, 0 failed, ETA 3m10s` every `every` seconds
    (`12/48 done (1 diverged, 2 at chance)`: a diverged trial is done, with its result; one at chance completed
    but learned nothing), and mirrors each trial into MLflow (a diverged trial's run: FINISHED, tags
    basin.status=diverged and basin.diverged_epoch; one at chance: tag basin.at_chance=true). A Tune
    trial is one sweep trial or a pack of them (its members: packing.members); results name their trial
    (`trial_key`), so each member has its own MLflow run."""

    def __init__(self, name: str, total: int, mirror: Mirror | None, every: float = 5.0,
                 say: Callable[[str], None] = print, skipped: int = 0,
                 runs: dict[str, tuple[str, dict[str, str]]] | None = None):
        self.name, self.total, self.mirror, self.every, self.say = name, total, mirror, every, say
        self.runs = runs or {}  # trial key -> its MLflow run's name and tags
        self.skipped = skipped
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}       # trial key -> one-line error of its last attempt
        self.diverged: dict[str, int] = {}     # trial key -> the epoch its training loss went non-finite
        self.at_chance: set[str] = set()       # trial keys that completed with test accuracy at chance
        self.stopped = ""                      # the line of the storage fault that stopped the sweep
        self.retried = 0
        self.attempt: dict[str, int] = {}      # trial key -> attempt seen in its latest results
        self.resumed: dict[str, int] = {}
        self.timings = {"trial_s": 0.0, "parquet_s": 0.0, "checkpoint_s": 0.0, "report_s": 0.0}
        self.started = time.monotonic()
        self._last = 0.0
        self._running = 0
        self._ended: list[Any] = []            # Tune trials ended since the last step (see forget_results)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its run config; the mirror holds a thread
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__("", 0, None, say=lambda _: None)

    @staticmethod
    def _trial(trial: Any) -> dict[str, Any]:
        return trial.config["trial"]

    # -- Tune hooks --------------------------------------------------------------------------------------------
    def _open(self, trial: Any) -> list[dict[str, Any]]:
        """The Tune trial's sweep trials not finished yet."""
        return [m for m in members(self._trial(trial)) if m["key"] not in self.done]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for t in self._open(trial) if self.mirror else []:
            title, tags = self.runs.get(t["key"], (t["name"], {}))
            self.mirror.trial(t["key"], title, t["config"], {"basin.trial_name": t["name"], **tags})
            self.mirror.status(t["key"], "RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        key, kind = result.get("trial_key") or self._trial(trial)["key"], result.get("kind")
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
            for m in self._open(trial):  # a pack's members stop with it
                self.failed[m["key"]] = self.stopped
                if self.mirror:
                    self.mirror.tags(m["key"], {"basin.last_error": self.stopped})
            return
        if kind == "final" and result.get("status") == "diverged":
            self.diverged[key] = int(result.get("diverged_epoch") or 0)
            name = next((m["name"] for m in members(self._trial(trial)) if m["key"] == key), key)
            self.say(f"[{self.name}] {name}: diverged at epoch {self.diverged[key]} (non-finite training "
                     "loss); its epochs rows are kept, not retried")
        if kind == "final" and result.get("at_chance"):
            self.at_chance.add(key)
            name = next((m["name"] for m in members(self._trial(trial)) if m["key"] == key), key)
            self.say(f"[{self.name}] {name}: finished at chance (test accuracy {result['test_accuracy']:.3f}, "
                     f"chance {result['chance_accuracy']:.3f}; finite loss): check its learning rate")
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
            status = {"basin.status": "diverged", "basin.diverged_epoch": self.diverged[key]} \
                if key in self.diverged else {"basin.status": "completed"}
            if key in self.at_chance:
                status["basin.at_chance"] = "true"
            self.mirror.tags(key, {**status, "basin.seconds": f"{result.get('seconds', 0):.1f}"})
        if kind == "final":  # its rows are written: done, even if its pack goes on
            self._finish(key)

    def _finish(self, key: str) -> None:
        self.done.add(key)
        self.failed.pop(key, None)
        if self.mirror:
            self.mirror.status(key, "FINISHED")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for t in self._open(trial):
            if self.stopped and self.failed.get(t["key"]) == self.stopped:  # it ended by reporting the fault
                if self.mirror:
                    self.mirror.status(t["key"], "FAILED")
                continue
            self._finish(t["key"])
        self._ended.append(trial)  # forgotten at the next step: Tune's own callbacks after this one read it

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.retried += 1
        err = self._error(trial)
        open_ = self._open(trial)
        for t in open_:
            self.say(f"[{self.name}] {t['name']}: attempt {self.attempt.get(t['key'], '?')} failed "
                     f"({err}); retrying from its last checkpoint")
            if self.mirror:
                self.mirror.tags(t["key"], {"basin.last_error": err})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = self._error(trial)
        for t in self._open(trial):
            self.failed[t["key"]] = err
            self.say(f"[{self.name}] {t['name']}: failed for good ({err})")
            if self.mirror:
                self.mirror.tags(t["key"], {"basin.status": "failed", "basin.last_error": err})
                self.mirror.status(t["key"], "FAILED")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        for trial in self._ended:
            forget_results(trial)
        self._ended.clear()
        now = time.monotonic()
        if now - self._last >= self.every:  # Tune steps many times a second: count trials only when printing
            self._last = now
            self._running = sum(len(self._open(t)) for t in trials if t.status == "RUNNING")  # sweep trials
            self.say(self.line())

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._running = 0

    # -- text --------------------------------------------------------------------------------------------------
    def line(self) -> str:
        done, failed = len(self.done), len(self.failed)
        left = self.total - done - failed
        flagged = ", ".join(f"{n} {what}" for n, what in ((len(self.diverged), "diverged"),
                                                           (len(self.at_chance), "at chance")) if n)
        diverged = f" ({flagged})" if flagged else ""
        elapsed = time.monotonic() - self.started
        eta = f"ETA {fmt_seconds(elapsed / done * left)}" if done and left else ("ETA ?" if left else "")
        skipped = f" (+{self.skipped} from earlier runs)" if self.skipped else ""
        return (f"[{self.name}] {done}/{self.total} done{diverged}{skipped}, {self._running} running, {failed} failed, "
                f"{fmt_seconds(elapsed)} elapsed" + (f", {eta}" if eta else ""))

    @staticmethod
    def _error(trial: Any) -> str:
        return trial_error(trial)

