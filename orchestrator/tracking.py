"""The MLflow mirror of a sweep: one experiment, one parent run, one child run per trial.

It lives in the driver and is fed from the Ray Tune result stream, so the trials never talk to MLflow:
one writer (SQLite's locks are no issue), nothing on the training hot path, and the workers need no
route to the tracking server. A background thread batches everything into `MlflowClient.log_batch`
(<= 1000 metrics a call). If the server is unreachable, data waits in memory and is retried with back-off;
what still cannot be logged at the end is counted and reported as the gap (Parquet is complete
regardless: it is written by the trials themselves).

A trial's child run is found again by its `basin.trial_key` tag under the sweep's parent run, so a retried
or resumed trial continues its own run; epochs it already logged are not logged twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_METRICS = 1000     # log_batch: at most 1000 metrics ...
MAX_PARAMS = 100       # ... 100 params and 100 tags per call
MAX_TAGS = 100
MAX_PARAM_CHARS = 6000  # MLflow cuts longer param values (then they would look changed on the next run)
MAX_PENDING = 500_000  # metrics held while the server is down, beyond that they are dropped (and counted)
ROLE_TAG, SWEEP_ROLE, TRIAL_ROLE = "basin.role", "sweep", "trial"  # parent run / child runs of a sweep
# In an experiment tag's value: replaced by the ids of the experiment and of the sweep's parent run.
EXPERIMENT_ID, PARENT_RUN_ID = "{experiment_id}", "{parent_run_id}"
# A trial's tags in MLflow besides its params: what one filters and groups by in the UI.
TAG_FIELDS = ("shape", "method", "dataset", "model", "endpoints", "layerwise", "batchnorm", "label_noise", "seed")
# Errors that will not go away by retrying (a bad value, a run that does not exist): drop and count.
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE",
             "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED"}


def fill_ids(text: str, experiment_id: str, parent_run_id: str) -> str:
    return text.replace(EXPERIMENT_ID, experiment_id).replace(PARENT_RUN_ID, parent_run_id)


def quiet_http_defaults() -> None:
    """MLflow's HTTP client retries 7 times with back-off (minutes against a dead server): the mirror retries
    on its own schedule instead. Users' explicit settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


@dataclass
class _RunBuffer:
    name: str = ""
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # key, value, timestamp ms, step, whether it is a per-epoch metric (skipped if the step was logged before)
    metrics: list[tuple[str, float, int, int, bool]] = field(default_factory=list)
    status: str | None = None     # RUNNING / FINISHED / FAILED, applied after the metrics
    params_again: bool = False    # log the params even to a run found from an earlier run


@dataclass(frozen=True)
class FoundRun:
    """A trial's run as found in MLflow: enough to tell whether it is complete without reading it again."""
    run_id: str
    status: str          # RUNNING / FINISHED / FAILED / KILLED
    epochs_logged: int   # tag basin.epochs_logged: every epoch 1..n is logged
    trial_status: str    # tag basin.status: "completed" once the final metrics went with it
    metrics: int         # how many metric keys it has
    params: int


@dataclass
class Gap:
    """What could not be mirrored to MLflow."""
    metrics: int = 0
    trials: set[str] = field(default_factory=set)
    error: str = ""

    def __bool__(self) -> bool:
        return bool(self.metrics or self.trials)

    def describe(self, uri: str) -> str:
        return (f"MLflow mirror incomplete: {self.metrics} metrics of {len(self.trials)} trials were not logged "
                f"to {uri} ({self.error}); the Parquet results are complete")


class Mirror:
    """Mirror a sweep into MLflow from the driver. Methods only queue; a thread does the I/O."""

    def __init__(self, uri: str, experiment: str, sweep_tags: dict[str, str] | None = None,
                 sweep_text: str = "", artifact_location: str | None = None, every: float = 2.0,
                 warn: Callable[[str], None] | None = None, description: str = "",
                 sweep_params: dict[str, Any] | None = None, experiment_tags: dict[str, str] | None = None,
                 live: bool = True):
        self.uri, self.experiment = uri, experiment
        self.sweep_tags, self.sweep_text = dict(sweep_tags or {}), sweep_text
        self.description = description
        self.sweep_params = {k: param(v)[:MAX_PARAM_CHARS] for k, v in (sweep_params or {}).items()}
        self.experiment_tags = dict(experiment_tags or {})
        self.artifact_location, self.every = artifact_location, every
        # live: a sweep is running (its parent run is set RUNNING, its file, params and views refreshed).
        # Not live (orchestrator/sync.py): an existing parent run is left as it is, only read.
        self.live = live
        self.warn = warn or (lambda msg: None)
        self.gap = Gap()
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.run_ids: dict[str, str] = {}          # trial key -> child run id
        self.logged: dict[str, set[int]] = {}      # trial key -> epoch steps its run has
        self.times_ms: dict[str, list[int | None]] = {}  # trial key -> the trial's own start and end (ms)
        self._found: set[str] = set()              # runs that existed before this mirror started
        self.found: dict[str, FoundRun] = {}       # ... what they hold (read once, in pages, by _open)
        self.duplicates: list[str] = []            # run ids of second runs of a trial (none unless a bug)
        self.parent_status, self.parent_metrics = "", 0  # the parent run as found (status, how many metrics)
        self._started: set[str] = set()            # trials whose start time the driver has passed on
        self._terminated: set[str] = set()         # runs not RUNNING (ended, or found ended)
        self._queue: list[tuple[str, str, Any]] = []
        self._pending: dict[str, _RunBuffer] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._retry_at = 0.0
        self._backoff = 0.0
        self._warned = False
        self._closing = False
        self._client: Any = None
        self.busy = 0.0  # seconds the thread spent talking to MLflow
        self._thread = threading.Thread(target=self._loop, name="basin-mlflow", daemon=True)

    # -- what the driver calls (cheap, never raises) ---------------------------------------------------------
    def start(self) -> Mirror:
        quiet_http_defaults()
        self._thread.start()
        return self

    def trial(self, key: str, name: str, config: dict[str, Any], tags: dict[str, Any] | None = None,
              params_again: bool = False) -> None:
        """Make sure trial `key` has a child run named `name`, with the config as params (and `tags`). A new
        run is created once its start time is known (`times`) or it ends, so that MLflow shows the trial's own
        times rather than those of the driver's flushes. A run found from an earlier run keeps its params
        unless `params_again` (orchestrator/sync.py: a run created just before a driver died has none)."""
        params = {k: param(v) for k, v in config.items()}
        t = {k: param(config[k]) for k in TAG_FIELDS if k in config}
        t.update({k: str(v) for k, v in (tags or {}).items()})
        self._put(key, "trial", (name, params, t, params_again))

    def times(self, key: str, start: float | None = None, end: float | None = None) -> None:
        """The trial's start and end (seconds since the epoch, as in the trials table). The first start of a
        trial wakes the thread: its run is created at once, not at the next periodic flush."""
        self._put(key, "times", (start, end))
        if start is not None and key not in self._started:
            self._started.add(key)
            self._wake.set()

    def metrics(self, key: str, values: dict[str, float], step: int, epoch: bool = False) -> None:
        """Metrics at one step; with `epoch`, a step this trial's run already has is skipped."""
        self._put(key, "metrics", (values, step, int(time.time() * 1000), epoch))

    def tags(self, key: str, tags: dict[str, Any]) -> None:
        self._put(key, "tags", {k: str(v) for k, v in tags.items()})

    def status(self, key: str, status: str) -> None:
        self._put(key, "status", status)

    def close(self, status: str = "FINISHED", summary: dict[str, Any] | None = None,
              metrics: dict[str, float] | None = None, timeout: float = 30.0) -> Gap:
        """Flush what is left (one more try even when the server was down), end the parent run (with
        `summary` as tags and `metrics` as its metrics), return the gap. Waits at most `timeout` seconds."""
        if summary:
            self._put("", "tags", {f"basin.{k}": str(v) for k, v in summary.items()})
        if metrics:
            self.metrics("", metrics, step=0)
        self._put("", "status", status)
        self._closing = True
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:  # never started (orchestrator/sync.py): one flush in this thread
            self._drain()
            self._flush()
        with self._lock:
            for key, buf in self._pending.items():
                self._count_gap(key, buf, "still pending at exit")
            for _, key, _ in self._queue:
                self.gap.trials.add(key)
            self._pending.clear()
            self._queue.clear()
        self.gap.trials.discard("")
        return self.gap

    def _put(self, key: str, kind: str, value: Any) -> None:
        with self._lock:
            self._queue.append((kind, key, value))

    # -- the thread ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.clear()  # before draining: a wake-up that comes later is not lost
            stopping = self._stop.is_set()
            self._drain()
            if self._pending and (stopping or time.monotonic() >= self._retry_at):
                t0 = time.perf_counter()
                self._flush()
                self.busy += time.perf_counter() - t0
            if stopping:
                return
            self._wake.wait(self.every)

    def _drain(self) -> None:
        with self._lock:
            queue, self._queue = self._queue, []
        for kind, key, value in queue:
            buf = self._pending.setdefault(key, _RunBuffer())
            if kind == "trial":
                buf.name, params, tags, again = value
                buf.params_again = buf.params_again or again
                buf.params.update(params)
                buf.tags.update(tags)
            elif kind == "metrics":
                values, step, ts, epoch = value
                buf.metrics += [(k, float(v), ts, step, epoch) for k, v in values.items() if v is not None]
            elif kind == "tags":
                buf.tags.update(value)
            elif kind == "times":
                have = self.times_ms.setdefault(key, [None, None])  # kept across flushes, unlike the buffer
                have[0] = int(value[0] * 1000) if have[0] is None and value[0] is not None else have[0]
                have[1] = int(value[1] * 1000) if value[1] is not None else have[1]
            elif kind == "status":
                buf.status = value
        held = sum(len(b.metrics) for b in self._pending.values())
        if held > MAX_PENDING:  # the server has been down a long time: keep memory bounded
            for key, buf in list(self._pending.items()):
                if buf.metrics:
                    self._count_gap(key, buf, "too much data held while MLflow was unreachable", metrics_only=True)

    def send(self) -> None:
        """Send everything queued now, in this thread; raises when MLflow cannot be reached (what was not sent
        stays queued). For a mirror that was not started (orchestrator/sync.py)."""
        self._drain()
        self._send()

    def _send(self) -> None:
        self._open()
        for key in list(self._pending):
            buf = self._pending[key]
            try:
                if self._flush_run(key, buf):
                    del self._pending[key]
            except Exception as e:
                if not _permanent(e):
                    raise
                self._count_gap(key, buf, _one_line(e))
                del self._pending[key]

    def _flush(self) -> None:
        try:
            self._send()
            self._backoff = 0.0
        except Exception as e:  # unreachable, locked, timed out: keep the data, try again later
            self._backoff = min(60.0, max(2.0, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            self.gap.error = _one_line(e)
            if not self._warned:
                self._warned = True
                self.warn(f"MLflow at {self.uri} is unreachable ({self.gap.error}); training goes on, "
                          "metrics are held and retried, Parquet is unaffected")

    def _count_gap(self, key: str, buf: _RunBuffer, why: str, metrics_only: bool = False) -> None:
        self.gap.metrics += len(buf.metrics)
        self.gap.trials.add(key)
        self.gap.error = self.gap.error or why
        buf.metrics = []
        if not metrics_only:
            buf.params, buf.tags, buf.status = {}, {}, None

    def open(self) -> None:
        """Experiment, parent run and the child runs that already exist (once; the thread does it lazily)."""
        self._open()

    def _open(self) -> None:
        if self.parent_id is not None:
            return
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        client = self._client or MlflowClient(tracking_uri=self.uri)
        self._client = client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            exp_id = client.create_experiment(self.experiment, artifact_location=self.artifact_location,
                                              tags={"basin.sweep": self.experiment})
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
        parents = client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = '{SWEEP_ROLE}'", max_results=1,
                                     order_by=["attributes.start_time ASC"])
        if parents:
            parent, have = parents[0].info.run_id, parents[0].data.params
            self.parent_status, self.parent_metrics = parents[0].info.status, len(parents[0].data.metrics)
            if self.live:
                client.update_run(parent, status="RUNNING")
        else:
            run = client.create_run(exp_id, run_name=self.experiment,
                                    tags={ROLE_TAG: SWEEP_ROLE, "basin.sweep": self.experiment})
            parent, have = run.info.run_id, {}
            self.parent_status = "RUNNING"
        if self.live or not parents:
            self._describe_parent(client, exp_id, parent, have)
        self._find_runs(client, exp_id, parent)
        self.experiment_id, self.parent_id = exp_id, parent

    def _describe_parent(self, client: Any, exp_id: str, parent: str, have: dict[str, str]) -> None:
        """The experiment's views, the parent run's sweep file, params and tags."""
        from mlflow.entities import Param, RunTag

        try:  # what the UI opens with (see orchestrator/ui.py); the runs do not depend on it
            for k, v in self.experiment_tags.items():
                client.set_experiment_tag(exp_id, k, fill_ids(v, exp_id, parent))
        except Exception as e:
            if not _permanent(e):
                raise
            self.warn(f"MLflow: could not set the experiment's views ({_one_line(e)})")
        if self.sweep_text:
            try:  # the file of the latest run
                client.log_text(parent, self.sweep_text, "sweep.yaml")
            except Exception as e:  # an artifact store we cannot reach must not stop the metrics
                self.warn(f"MLflow: could not store sweep.yaml as an artifact ({_one_line(e)})")
        # Params cannot change: those of an edited sweep that differ from the first run's are listed in a tag
        # (the current values are in the tags and in sweep.yaml).
        params = [Param(k, v) for k, v in self.sweep_params.items() if have.get(k, v) == v]
        changed = sorted(k for k, v in self.sweep_params.items() if have.get(k, v) != v)
        tags = {f"basin.{k}": str(v) for k, v in self.sweep_tags.items()}
        tags.update({"mlflow.note.content": self.description} if self.description else {})
        tags.update({"basin.params_changed": ", ".join(changed)} if changed else {})
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, max(len(params), len(tag_list)), MAX_PARAMS):
            client.log_batch(parent, params=params[i:i + MAX_PARAMS], tags=tag_list[i:i + MAX_TAGS])

    def _find_runs(self, client: Any, exp_id: str, parent: str) -> None:
        """Child runs of earlier runs of this sweep, read in pages of 1000 (one query per page, never one per
        trial): a trial continues its own run, and orchestrator/sync.py sees what each one holds."""
        token = None
        while True:
            page = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000,
                                      order_by=["attributes.start_time ASC"], page_token=token)
            for r in page:
                key = r.data.tags.get("basin.trial_key")
                if not key:
                    continue
                if key in self.run_ids:
                    self.duplicates.append(r.info.run_id)
                    continue
                self.run_ids[key] = r.info.run_id
                self._found.add(key)
                if r.info.status != "RUNNING":
                    self._terminated.add(key)
                done = int(r.data.tags.get("basin.epochs_logged", 0))  # every epoch 1..done is logged
                self.logged.setdefault(key, set()).update(range(1, done + 1))
                self.found[key] = FoundRun(r.info.run_id, r.info.status, done, r.data.tags.get("basin.status", ""),
                                           len(r.data.metrics), len(r.data.params))
            token = page.token
            if not token:
                break

    def _flush_run(self, key: str, buf: _RunBuffer) -> bool:
        """Send one run's buffer in as few calls as MLflow allows (a new trial that already finished: create,
        one log_batch with params, tags and metrics, terminate); what succeeded is removed from the buffer,
        so a retry sends only the rest. False: a new run waits for its start time (see `trial`)."""
        from mlflow.entities import Metric, Param, RunTag

        client = self._client
        if key == "":  # the sweep's parent run
            run_id = self.parent_id
        else:
            run_id = self.run_ids.get(key)
            if run_id is None:
                start, _ = self.times_ms.get(key, (None, None))
                if start is None and buf.status in (None, "RUNNING") and not self._closing:
                    return False
                tags = {"mlflow.parentRunId": self.parent_id, ROLE_TAG: TRIAL_ROLE,
                        "basin.sweep": self.experiment, "basin.trial_key": key, **buf.tags}
                run_id = client.create_run(self.experiment_id, run_name=buf.name or key, tags=tags,
                                           start_time=start).info.run_id
                self.run_ids[key] = run_id
                buf.tags = {}
            elif key in self._found and not buf.params_again:
                buf.params = {}  # a run found again has its params (they cannot change)
        if buf.status == "RUNNING":
            if key in self._terminated:  # a run ended earlier (an earlier sweep run) is continued
                client.update_run(run_id, status="RUNNING")
                self._terminated.discard(key)
            buf.status = None
        # Epochs this run already has (from an earlier attempt or run) are not logged again: a resumed
        # attempt reports the epochs after its checkpoint a second time, and a finished trial reports all
        # its epochs once more, which fills in any whose report died with a worker.
        logged = self.logged.setdefault(key, set())
        fresh, seen = [], set()
        for m in buf.metrics:  # (key, value, ts, step, is_epoch); an epoch may be queued twice before a flush
            if m[4] and (m[3] in logged or (m[0], m[3]) in seen):
                continue
            seen.add((m[0], m[3]))
            fresh.append(m)
        buf.metrics = fresh
        new_steps = {m[3] for m in buf.metrics if m[4]}
        if new_steps:
            done = 0
            while done + 1 in logged | new_steps:
                done += 1
            buf.tags["basin.epochs_logged"] = str(done)
        params = [Param(k, v) for k, v in buf.params.items()]
        tags = [RunTag(k, v) for k, v in buf.tags.items()]
        while params or tags or buf.metrics:
            p, t = params[:MAX_PARAMS], tags[:MAX_TAGS]
            if len(buf.metrics) > MAX_METRICS - len(p) - len(t):
                t = []  # tags (basin.epochs_logged, basin.status) go with the last metrics, never ahead of them
            n = MAX_METRICS - len(p) - len(t)  # at most 1000 entities in one call
            chunk = buf.metrics[:n]
            client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step, _ in chunk], params=p,
                             tags=t)
            params, tags, buf.metrics = params[len(p):], tags[len(t):], buf.metrics[len(chunk):]
            buf.params = {x.key: x.value for x in params}
            buf.tags = {x.key: x.value for x in tags}
        logged |= new_steps
        if buf.status:
            end = self.times_ms.get(key, (None, None))[1] if buf.status == "FINISHED" else None
            client.set_terminated(run_id, status=buf.status, end_time=end)
            self._terminated.add(key)
            buf.status = None
        return True


def param(v: Any) -> str:
    """A config value as an MLflow param."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _permanent(e: Exception) -> bool:
    return getattr(e, "error_code", None) in PERMANENT


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


# -- what a trial's run holds, by name ---------------------------------------------------------------------------
# Per-epoch curves (step = epoch). Prefixed so that they open the run page: MLflow draws a section per prefix,
# sorted by name, with unprefixed keys last.
EPOCH_METRICS = {"train_loss": "epoch/train_loss", "train_acc": "epoch/train_acc", "val_acc": "epoch/val_acc",
                 "val_nll": "epoch/val_nll", "reg": "epoch/reg", "lr": "epoch/lr",
                 "seconds": "speed/seconds", "samples_per_s": "speed/samples_per_s"}
# Headline: the same names for every method, from the point and the ensemble the trial is judged by
# (trials.main_point / trials.main_ensemble): main/test_accuracy, main/ensemble_test_accuracy, ...
HEADLINE = ("accuracy", "nll", "ece", "brier")
MAIN, MAIN_ENSEMBLE = "main/test_", "main/ensemble_test_"
# Final values (the headline, every evaluated point, probes, the group runs' statistics) are logged once at
# this step: MLflow 3.17 draws a metric logged once at step 0 as bars (one per run) in its chart view, and one
# logged at the last epoch N as a dot at x = N on an axis from N - 1 to N + 1.
FINAL_STEP = 0
# Ordered families of points (the α grid, the barycentric grid, endpoints, snapshots, heads) are logged as one
# key per metric whose step is the point's index in the family, and the key says so:
# landscape/alpha_index/test_accuracy (step i = the i-th α of the grid, ascending). The α values themselves
# are the metric landscape/alpha_index/alpha at the same steps: choose it as a chart's x-axis ("X-axis:
# metric" in MLflow's chart settings) to draw a profile against α itself (MLflow steps are integers).
PROFILE_KINDS = ("alpha", "simplex", "endpoint", "snapshot", "member")
# Random samples (a subspace's samples, Fort et al.'s samplers) have no order: never one joined line, each
# is a point under its own name like any other (test/random_3/accuracy, at FINAL_STEP).
SAMPLE_KINDS = ("sample", "random", "dropout", "gaussian", "pca")
PROFILE = "landscape"
ALPHA_KEY = f"{PROFILE}/alpha_index/alpha"  # the α of each step of the α profiles


def profile_key(kind: str, split: str, metric: str, corruption: str = "") -> str:
    """landscape/alpha_index/test_accuracy, landscape/endpoint_index/val_nll, ..._snow3_accuracy."""
    return f"{PROFILE}/{kind}_index/{split}_{corruption + '_' if corruption else ''}{metric}"


def headline_names(ensemble: bool = True) -> list[str]:
    """main/test_accuracy, ... (and main/ensemble_test_accuracy, ... for trials with an ensemble)."""
    return [f"{MAIN}{m}" for m in HEADLINE] + ([f"{MAIN_ENSEMBLE}{m}" for m in HEADLINE] if ensemble else [])


def headline_metrics(evals: list[dict[str, Any]], main_point: str, main_ensemble: str) -> dict[str, float]:
    """The headline metrics of one trial from its evals rows (clean test split)."""
    out = {}
    for prefix, point in ((MAIN, main_point), (MAIN_ENSEMBLE, main_ensemble)):
        for r in evals:
            if point and r["point"] == point and r["split"] == "test" and not r.get("corruption"):
                out.update({f"{prefix}{m}": float(r[m]) for m in HEADLINE if r.get(m) is not None})
    return out


# -- one run per seed group --------------------------------------------------------------------------------------
# A group run (tag basin.role=group, nested under the sweep's run) holds, for each headline metric over the
# completed trials of one seed group, the mean under the trial's own name and the standard deviation and count
# under parallel prefixes, so that the chart view's `main` section holds the means only:
#   main/test_accuracy (mean), main_std/test_accuracy (sample std, ddof 1; 0 for one trial),
#   main_n/test_accuracy (how many trials it is over); mean and std to GROUP_DIGITS significant digits
GROUP_ROLE = "group"
STD_PREFIX, N_PREFIX = "main_std/", "main_n/"


def std_name(name: str) -> str:
    """main/test_accuracy -> main_std/test_accuracy"""
    return STD_PREFIX + name.split("/", 1)[1]


def n_name(name: str) -> str:
    """main/test_accuracy -> main_n/test_accuracy"""
    return N_PREFIX + name.split("/", 1)[1]


def group_values(folder: str, groups: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """Per seed group (`groups`: trial key -> group label), each headline metric's values over the group's
    completed trials (the latest completed attempt of each), read from Parquet."""
    import pyarrow.compute as pc

    from trainers.folder import Folder

    f = Folder(folder)
    chosen: dict[str, dict[str, Any]] = {}  # the latest completed attempt of each trial
    for r in f.read_arrow("trials", ["trial_key", "attempt", "status", "main_point", "main_ensemble"]).to_pylist():
        if r["status"] == "completed" and r["trial_key"] in groups and \
                r["attempt"] >= chosen.get(r["trial_key"], {}).get("attempt", -1):
            chosen[r["trial_key"]] = r
    evals = f.read_arrow("evals", ["trial_key", "attempt", "split", "point", "corruption", *HEADLINE])
    evals = evals.filter(pc.equal(evals["split"], "test")).to_pylist()
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in evals:
        if r["trial_key"] in chosen and r["attempt"] == chosen[r["trial_key"]]["attempt"]:
            rows.setdefault(r["trial_key"], []).append(r)
    values: dict[str, dict[str, list[float]]] = {}
    for key, t in chosen.items():
        group = values.setdefault(groups[key], {})
        for name, v in headline_metrics(rows.get(key, []), t["main_point"] or "", t["main_ensemble"] or "").items():
            group.setdefault(name, []).append(v)
    return values


GROUP_DIGITS = 5  # significant digits of a group's mean and std: MLflow's table shows every digit it is given


def group_metrics(values: dict[str, list[float]]) -> dict[str, float]:
    """One group's metrics (see GROUP_ROLE) from its values per headline metric, mean and std rounded to
    GROUP_DIGITS significant digits (the exact values are a groupby away in Parquet)."""
    import statistics

    def sig(x: float) -> float:
        return float(f"{x:.{GROUP_DIGITS}g}")

    out: dict[str, float] = {}
    for name, v in sorted(values.items()):
        out[name] = sig(statistics.fmean(v))
        out[std_name(name)] = sig(statistics.stdev(v)) if len(v) > 1 else 0.0
        out[n_name(name)] = float(len(v))
    return out


def summary_metrics(folder: str, groups: dict[str, str]) -> dict[str, float]:
    """The sweep's run's own metrics: how many seed groups and completed trials it has (`sweep/groups`,
    `sweep/completed`). The statistics per group are in the group runs (orchestrator/sync.py heal_groups),
    not here: as metrics of one run they buried MLflow's chart view."""
    values = group_values(folder, groups)
    completed = sum(max((len(v) for v in metrics.values()), default=0) for metrics in values.values())
    return {"sweep/groups": float(len(values)), "sweep/completed": float(completed)}


def metric_label(label: str) -> str:
    """A label as part of an MLflow metric name (letters, digits, _ - . and spaces; no '/')."""
    text = re.sub(r"[^\w.\- ]", "_", label.replace("=", " "))
    return text if len(text) <= 150 else f"{text[:140]} {hashlib.sha1(label.encode()).hexdigest()[:8]}"


def eval_metrics(evals: list[dict[str, Any]], main_point: str = "", main_ensemble: str = "",
                 step: int = FINAL_STEP) -> list[tuple[str, float, int]]:
    """A finished trial's evals rows as MLflow metrics (key, value, step): the headline and every single point
    under its own name (`test/center/accuracy`; corrupted data: `test/center/snow3/nll`; random samples too:
    `test/random_3/accuracy`) at FINAL_STEP, and each ordered family of points as profiles
    (`landscape/alpha_index/test_accuracy`, step = index in the family, α ascending, with the α values as
    `landscape/alpha_index/alpha`). `step` is not used: final values always go at FINAL_STEP (older callers
    passed the last epoch)."""
    out = [(k, v, FINAL_STEP) for k, v in headline_metrics(evals, main_point, main_ensemble).items()]
    families: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in evals:
        if r.get("kind") == "cell":  # heat-map cells (method mpo): hundreds per trial, Parquet only
            continue
        corr = f"{r['corruption']}{r.get('severity') or ''}" if r.get("corruption") else ""
        if r.get("kind") in PROFILE_KINDS:
            families.setdefault((r["kind"], r["split"], corr), []).append(r)
            continue
        for m in HEADLINE:
            if r.get(m) is not None:
                out.append((f"{r['split']}/{r['point']}{'/' + corr if corr else ''}/{m}", float(r[m]), FINAL_STEP))
    coordinate: dict[int, float] = {}
    for (kind, split, corr), rows in families.items():
        if kind == "alpha":
            rows = sorted(rows, key=lambda r: r["alpha"])
            coordinate = coordinate or {i: float(r["alpha"]) for i, r in enumerate(rows) if r.get("alpha") is not None}
        for i, r in enumerate(rows):
            for m in HEADLINE:
                if r.get(m) is not None:
                    out.append((profile_key(kind, split, m, corr), float(r[m]), i))
    out += [(ALPHA_KEY, a, i) for i, a in coordinate.items()]
    return out


def probe_metrics(probes: list[dict[str, Any]]) -> dict[str, float]:
    """The probes rows of a finished trial (trainers/probes.py) as MLflow metrics: `probe/center/hessian_top`,
    `probe/center/hessian_trace`, `probe/origin/goldilocks_trace_ratio`, `probe/point/stiffness_within`, ..."""
    wanted = {"hessian": ("trace",), "goldilocks": ("trace_ratio", "positive_fraction"),
              "stiffness": ("within", "between")}
    out = {}
    for r in probes:
        values = {m: r.get(m) for m in wanted.get(r["probe"], ())}
        if r["probe"] == "hessian" and len(r.get("eigenvalues") or []):
            values["top"] = r["eigenvalues"][0]
        out.update({f"probe/{r['point']}/{r['probe']}_{m}": float(v) for m, v in values.items() if v is not None})
    return out
