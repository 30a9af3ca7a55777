"""`basin run SWEEP.yaml`: every trial of a sweep as one Ray Tune trial, reporting to Parquet (the trial
writes it) and to MLflow (the driver mirrors the Tune result stream).

Resume: Parquet is the source of truth. A run first reads the sweep's trials table and leaves out every
trial that already has a completed row; the rest start again, each from its latest checkpoint
(`<results>/<sweep>/checkpoints/<key>.pt`, written at every checkpoint beside the Tune one). So
re-running a sweep, with or without `--resume`, continues it; editing the sweep (more seeds) runs only
the new trials. Within one run, Tune's FailureConfig retries a failed trial from its last Tune checkpoint.

Nothing here imports Ray at module level: the CLI validates a sweep before Ray is even loaded.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import packing, preflight
from orchestrator.cli import UserError
from orchestrator.store import Store, storage_fault, storage_line
from orchestrator.sweep import Sweep, Trial, add_set_arg, describe, is_uri, load_sweep
from orchestrator.sync import heal, record_sync, sweep_mirror
from orchestrator.tracking import FINAL_STEP, Mirror, eval_metrics, probe_metrics, summary_metrics
from trainers.config import TrialConfig
from trainers.folder import unreadable
from trainers.schema import FINAL_STATUSES, TABLES, main_test_accuracy

POINTER_FILE = "basin_checkpoint.json"
STORAGE_ERROR = "storage_error"  # the report kind of a trial that found the results folder full or read-only
# (progress.STORAGE_ERROR; the driver stops the sweep on it)
RECORD_BYTES = 4096  # a run record's size on disk: its final version fits in place on a full disk
REPORT_EVERY_S = 2.0   # epoch rows are reported to Tune (and MLflow) at least this often, and at checkpoints
# Tune's own loggers write a JSON/CSV line per result per trial; Parquet and MLflow cover that.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
# Loggers whose messages are noise here: no per-trial result files on purpose, checkpoint notices.
QUIET_LOGGERS = ("ray.tune.analysis.experiment_analysis", "ray.train._internal.storage")
EXPERIMENT_STATE_LOGGER = "ray.tune.execution.experiment_state"


class _OneLine(logging.Filter):
    """Tune logs a failed experiment-state save with a traceback; the sweep's own line says why (a full or
    read-only folder), so this keeps Tune's message to one line with the error at its end."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg, record.args = f"{record.getMessage()}{record.exc_info[1]}", ()
            record.exc_info, record.exc_text = None, None
        return True


# Trials (or packs) per Ray Tune run: Tune holds every trial of a run in the driver until the run ends
# (~30 KB each, after progress.forget_results), so a long sweep runs as consecutive Tune runs of this many;
# each boundary waits for the run's last trials, a small price at this size.
TUNE_CHUNK = 2000


def say(msg: str) -> None:
    print(msg, flush=True)


# -- inside the Tune trial (a Ray worker) ---------------------------------------------------------------
@dataclass(frozen=True)
class TrialContext:
    sweep: str
    results: str   # the sweep's folder (local or URI)
    threads: int   # torch threads: the CPUs given to one trial


def reset_state(threads: int, key: str) -> None:
    """Actors are reused across trials: leave nothing of the previous trial behind. run_trial seeds torch
    itself; the global RNGs are seeded from the key anyway so stray randomness is reproducible too."""
    import random

    import numpy as np
    import torch

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(max(1, threads))
    torch.set_grad_enabled(True)
    torch.set_default_dtype(torch.float32)
    seed = int(key[-8:], 16)  # a trial's key, or a pack's (pack-<hex>)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # GPU memory held by the last trial's leftovers (reference cycles) goes back before the next one.
        # Not on CPU: a full collection over torch's heap costs ~0.1 s, more than a trivial trial.
        gc.collect()
        torch.cuda.empty_cache()


class TuneSink:
    """A trainers.results.Sink inside a Tune trial. Epoch rows go to Tune (and from there to MLflow),
    coalesced: one report per checkpoint or per REPORT_EVERY_S seconds, since every report is a round trip
    to the driver that the trial waits for. A checkpoint's state goes to the results folder and a pointer
    to it to Tune. The finished trial's rows go to Parquet, then one last report with its final metrics."""

    def __init__(self, store: Store, sweep: str, key: str, name: str, attempt: int, resumed_from: int,
                 epochs: int, fail_at: int = 0, fail_attempts: int | None = None, started: float | None = None,
                 hold_until: str = ""):
        self.store, self.sweep, self.key, self.name = store, sweep, key, name
        self.started = time.time() if started is None else started  # the trial's first start (the run's start)
        self.attempt, self.resumed_from, self.epochs = attempt, resumed_from, epochs
        self.fail_at, self.fail_attempts = fail_at, fail_attempts
        self.hold_until = hold_until if attempt == 0 else ""
        self.written = False
        self.pending: list[dict[str, float]] = []   # epoch rows not yet reported
        self.last_report = time.monotonic()
        self.io = {"parquet_s": 0.0, "checkpoint_s": 0.0, "report_s": 0.0}  # time not spent training

    def _report(self, kind: str, checkpoint_dir: str | None = None, **extra: Any) -> None:
        from ray import tune

        t0 = time.perf_counter()
        report = {"kind": kind, "trial_key": self.key, "attempt": self.attempt, "resumed_from_epoch": self.resumed_from,
                  "started_at": self.started, "epochs": self.pending, **(self.pending[-1] if self.pending else {}),
                  **extra}
        if checkpoint_dir is None:
            tune.report(report)
        else:
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))  # copied on return
        self.pending = []
        self.last_report = time.monotonic()
        self.io["report_s"] += time.perf_counter() - t0

    def progress(self, epoch_row: dict[str, Any], state: dict[str, Any] | None) -> None:
        epoch = int(epoch_row.get("epoch", 0))
        self.pending.append({k: v for k, v in epoch_row.items() if isinstance(v, (int, float))})
        last = epoch >= self.epochs  # its rows go with the final report, right after the evaluation
        if state is not None:
            # The state goes to the results folder (resume across runs reads it there); the Tune checkpoint
            # is a small pointer to it, so Tune keeps every one without the forced experiment snapshots
            # (O(trials) each) that CheckpointConfig(num_to_keep) triggers, and the state is written once.
            with tempfile.TemporaryDirectory(prefix="basin-ckpt-") as d:
                t0 = time.perf_counter()
                self.store.save_checkpoint(self.key, state)
                with open(os.path.join(d, POINTER_FILE), "w") as f:
                    json.dump({"trial_key": self.key, "epoch": state["epoch"], "attempt": self.attempt}, f)
                self.io["checkpoint_s"] += time.perf_counter() - t0
                if not last:
                    self._report("epoch", checkpoint_dir=d)
        elif not last and time.monotonic() - self.last_report >= REPORT_EVERY_S:
            self._report("epoch")
        # Fault injection for testing retries (config `extra`): fail after the checkpoint of the first epoch
        # >= basin_fail_at_epoch this attempt runs, in the first basin_fail_attempts attempts (default: all).
        if self.fail_at and epoch >= self.fail_at and (self.fail_attempts is None or self.attempt < self.fail_attempts):
            raise RuntimeError(f"injected failure after epoch {self.fail_at} (extra.basin_fail_at_epoch)")
        # Hold for testing (extra.basin_hold_until): a first attempt waits after its first checkpoint until that
        # file exists, so a test can act on a sweep whose trials are all mid-way (e.g. remove a node).
        if self.hold_until and state is not None:
            while not os.path.exists(self.hold_until):
                time.sleep(0.05)
            self.hold_until = ""

    def endpoint_states(self, cfg: TrialConfig) -> list[dict[str, Any]]:
        """A connect trial's endpoints: their final states from the results folder (orchestrator/connect.py)."""
        from orchestrator.connect import endpoint_states

        return endpoint_states(self.store, cfg)

    def finish(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        for row in tables.get("trials", []):
            row["name"] = self.name
        t0 = time.perf_counter()
        self.store.write_tables(tables, self.sweep, self.key, self.attempt)
        self.io["parquet_s"] += time.perf_counter() - t0
        self.written = True
        # every epoch once more: the mirror logs those it lacks (a report lost with a dead worker)
        self.pending = [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in tables.get("epochs", [])]
        trial = (tables.get("trials") or [{}])[0]
        metrics = eval_metrics(tables.get("evals", []), trial.get("main_point") or "", trial.get("main_ensemble") or "",
                               step=self.epochs)
        self._report("final", final_epoch=self.epochs, seconds=trial.get("seconds"),
                     status=trial.get("status"), diverged_epoch=trial.get("diverged_epoch"),
                     at_chance=trial.get("at_chance"), chance_accuracy=trial.get("chance_accuracy"),
                     test_accuracy=main_test_accuracy(tables.get("evals", []), trial.get("main_point") or ""),
                     finished_at=trial.get("finished_at"), io=dict(self.io),
                     metrics=[list(m) for m in metrics]
                     + [[k, v, FINAL_STEP] for k, v in probe_metrics(tables.get("probes", [])).items()])


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable: one sweep trial (or a pack of them), continued from a checkpoint when there is one."""
    from trainers.train import run_trial

    t = config["trial"]
    if "members" in t:
        return train_pack(t, ctx)
    store = Store(ctx.results)
    reset_state(ctx.threads, t["key"])
    try:
        cfg, sink, resume = _start(store, ctx, t)
    except Exception as e:
        if _storage_stop(store, ctx, [], e):
            return
        raise
    try:
        run_trial(cfg, sink=sink, resume=resume)
    except Exception as e:
        if not sink.written and _storage_stop(store, ctx, [(t["key"], sink.attempt)], e):
            return
        _failed(store, ctx, t, cfg, sink, e)
        raise


def _storage_stop(store: Store, ctx: TrialContext, attempts: list[tuple[str, int]], e: Exception) -> bool:
    """When `e` says the results folder takes no more writes (full, read-only): these attempts recorded nothing,
    so they leave nothing behind, and one report tells the driver to stop the sweep (retries would fail alike).
    False for any other error."""
    from ray import tune

    fault = storage_fault(e)
    if fault is None:
        return False
    for key, attempt in attempts:
        store.discard_attempt(key, attempt)
    tune.report({"kind": STORAGE_ERROR, "trial_key": attempts[0][0] if attempts else "",
                 "error": storage_line(ctx.results, fault)})
    return True


def _start(store: Store, ctx: TrialContext, t: dict[str, Any]) -> tuple[TrialConfig, TuneSink, dict | None]:
    """A trial's config, its sink (its attempt claimed) and the state it resumes from."""
    from ray import tune

    key, name = t["key"], t["name"]
    cfg = TrialConfig(**t["config"])
    resume = None
    # A Tune checkpoint exists when Tune retries this trial within the run; an earlier, interrupted run left
    # only the results folder's file. Both lead to checkpoints/<key>.pt (never older than the pointer).
    source = "tune" if tune.get_checkpoint() is not None else ""
    try:
        resume = store.load_checkpoint(key)
        source = source or ("results" if resume is not None else "")
    except Exception as e:  # unreadable: start over rather than fail the trial
        line = unreadable(store.path(f"checkpoints/{key}.pt"), "checkpoint", e)
        print(f"basin: warning: {line}; {name} starts over", file=sys.stderr)
    resumed_from = int(resume["epoch"]) if resume else 0
    started = time.time()
    attempt = store.claim_attempt(key, {"started_at": started, "host": socket.gethostname(), "pid": os.getpid(),
                                        "resumed_from_epoch": resumed_from, "checkpoint": source,
                                        "tune_trial_id": tune.get_context().get_trial_id()})
    extra = cfg.extra or {}
    # The MLflow run spans the whole trial: a run first created by a later attempt (its driver was killed before
    # it logged the first) still starts when the trial did.
    first = (store.attempts(key)[:1] or [{}])[0].get("started_at", started) if attempt else started
    sink = TuneSink(store, ctx.sweep, key, name, attempt, resumed_from, cfg.epochs,
                    fail_at=int(extra.get("basin_fail_at_epoch", 0)), fail_attempts=extra.get("basin_fail_attempts"),
                    hold_until=str(extra.get("basin_hold_until", "")),
                    started=first)
    sink.attempt_started = started  # this attempt's (a failed attempt's row spans it)
    return cfg, sink, resume


def _failed(store: Store, ctx: TrialContext, t: dict[str, Any], cfg: TrialConfig, sink: TuneSink,
            e: Exception) -> None:
    """Record a trial's failed attempt (a trials row with the error), unless its rows are already written."""
    from trainers.results import trial_row

    if sink.written:  # its rows are on disk: the trial is done, whatever failed after that
        print(f"basin: {t['name']}: error after its results were written ({e})", file=sys.stderr)
        return
    now = time.time()
    row = trial_row(cfg.to_dict(), name=t["name"], status="failed", error=f"{type(e).__name__}: {e}"[:2000],
                    started_at=sink.attempt_started, finished_at=now,
                    seconds=now - sink.attempt_started)
    try:
        store.write_tables({"trials": [row]}, ctx.sweep, t["key"], sink.attempt)
    except Exception as w:
        print(f"basin: {t['name']}: could not record the failure ({w})", file=sys.stderr)


def train_pack(t: dict[str, Any], ctx: TrialContext) -> None:
    """A pack of trials (orchestrator/packing.py) trained as one batched computation (trainers/pack.py); each
    member has its own attempt, checkpoint, rows and reports. A member that fails leaves the pack and the
    others finish; the pack then raises, so Tune retries it, and the retry runs only the members not yet
    completed, each from its own checkpoint."""
    from trainers.pack import run_pack

    store = Store(ctx.results)
    reset_state(ctx.threads, t["key"])
    todo = t["members"]
    if any(store.exists(f"attempts/{m['key']}.a0.json") for m in todo):  # a retry: some may be complete
        status = store.trial_status()
        todo = [m for m in todo if status.get(m["key"], {}).get("status") not in FINAL_STATUSES]
    started: list[tuple] = []
    try:
        for m in todo:
            started.append((m, *_start(store, ctx, m)))
    except Exception as e:
        if _storage_stop(store, ctx, [(m["key"], s.attempt) for m, _, s, _ in started], e):
            return
        raise
    by_epoch: dict[int, list[tuple]] = {}  # members resumed at different epochs cannot step together
    for s in started:
        by_epoch.setdefault(int(s[3]["epoch"]) if s[3] else 0, []).append(s)
    failed: dict[str, str] = {}
    faults: list[Exception] = []  # storage faults: the sweep stops
    for group in by_epoch.values():
        def drop(i: int, e: Exception, group: list[tuple] = group) -> None:
            m, cfg, sink, _ = group[i]
            if storage_fault(e) is not None:
                faults.append(e)
            elif not sink.written:
                _failed(store, ctx, m, cfg, sink, e)
                failed[m["name"]] = f"{type(e).__name__}: {e}"
        try:
            run_pack([s[1] for s in group], [s[2] for s in group], [s[3] for s in group], on_error=drop)
        except Exception as e:  # the pack's shared computation failed: every member not yet written
            for i, (m, _, sink, _) in enumerate(group):
                if not sink.written and m["name"] not in failed:
                    drop(i, e)
    if faults:
        _storage_stop(store, ctx, [(m["key"], s.attempt) for m, _, s, _ in started if not s.written], faults[0])
        return
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(t['members'])} packed trials failed: "
                           + "; ".join(f"{n}: {e}" for n, e in failed.items())[:1500])


def trial_name(trial: Any) -> str:
    return trial.config["trial"]["name"]


def trial_dirname(trial: Any) -> str:
    t = trial.config["trial"]
    return Trial(key=t["key"], name=t["name"], config=TrialConfig()).dirname


# -- the driver -------------------------------------------------------------------------------------------
@dataclass
class Summary:
    sweep: str
    total: int
    completed: int
    skipped: int = 0                       # completed (or diverged) in earlier runs
    ran: int = 0                           # trials started by this run
    failed: dict[str, str] = field(default_factory=dict)  # trial name -> error
    diverged: dict[str, int] = field(default_factory=dict)  # trial name -> the epoch its loss went non-finite
    at_chance: dict[str, float] = field(default_factory=dict)  # completed trial name -> its test set's chance
    seconds: float = 0.0
    mlflow_gap: str = ""
    report: str = ""                       # the report's index.html ("" when none was made)
    report_mlflow: bool = False            # ... and whether it is attached to the parent MLflow run
    stopped: str = ""                      # why the sweep stopped early (a full or read-only results folder)
    # seconds summed over this run's completed trials: training (trial rows' `seconds`), Parquet writes,
    # checkpoints, Tune reports; and the driver's MLflow thread busy time
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every trial ended with a result: completed, or diverged (a result too, not an error)."""
        return self.completed + len(self.diverged) == self.total


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to a cluster or start a local Ray bound to 127.0.0.1; False if Ray was already running in
    this process (a test, a notebook), which is then used as it is."""
    # Ray 2.60 turns token auth on for a new local cluster; set it explicitly so a driver connecting to a
    # cluster behaves the same (a cluster without auth: RAY_AUTH_MODE=disabled). Ray reads it when it is
    # imported, so only before that (otherwise Ray's own default stays, which is token auth for local).
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    common = dict(logging_level=logging.WARNING, log_to_driver=True)
    try:
        if address:
            ray.init(address=address, **common)
        else:
            from orchestrator.reaper import watch_driver

            watch_driver()  # what the local Ray starts ends with this process, however it ends
            with _loopback():
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **common)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        hint = (" (a cluster with token auth needs its token: `ray get-auth-token` on the head, or "
                "RAY_AUTH_MODE=disabled for a cluster without auth)" if "auth" in str(e).lower() else "")
        raise UserError(f"cannot start or reach {where}: {' '.join(str(e).split())[:300]}{hint}") from None
    return True


@contextlib.contextmanager
def _loopback() -> Iterator[None]:
    """Bind a local Ray to 127.0.0.1. `ray.init(_node_ip_address="127.0.0.1")` is not enough: Ray swaps a
    loopback address for the machine's routable one unless clusters are off, which is what Ray does on
    macOS/Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); Ray reads that flag when it picks the address."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def check_resources(sweep: Sweep, local: bool) -> None:
    """A trial that can never be placed waits forever: refuse it on a fixed local machine (preflight has
    checked this machine before Ray started; this catches a Ray already running in this process), warn on
    a cluster (an autoscaler may add the nodes)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = any(r.get("CPU", 0) >= sweep.cpus and r.get("GPU", 0) >= sweep.gpus for r in nodes)
    if fits:
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes)
    msg = f"resources: a trial needs {sweep.cpus:g} CPU and {sweep.gpus:g} GPU, but no node has that ({have})"
    if local:
        raise UserError(f"{sweep.path}: {msg}")
    say(f"[{sweep.name}] warning: {msg}; trials wait until the cluster has such a node")


def where_text(sweep: Sweep, report: str = "", report_mlflow: bool = False) -> str:
    """Where the results are and how to look at them (printed at the end of a run)."""
    rel = sweep.dir
    if not is_uri(sweep.dir) and not os.path.relpath(sweep.dir).startswith(".."):
        rel = os.path.relpath(sweep.dir)
    lines = [f"  Parquet: {sweep.dir}/{{trials,epochs,evals,predictions,weights}}/"]
    if report:
        lines.append(f"  Report:  {report}" + ("  (also artifacts report/ of the sweep's MLflow run)"
                                               if report_mlflow else ""))
    if sweep.mlflow:
        lines.append(f"  MLflow:  {sweep.mlflow}")
        if sweep.mlflow.startswith("sqlite:"):
            lines.append(f"           UI: basin ui {rel}   (prints the URL of the sweep's runs table)")
    lines += ["  pandas:", *(f"    {line}" for line in pandas_snippet(rel))]
    return "\n".join(lines)


def pandas_snippet(folder: str) -> list[str]:
    """Three lines that load a sweep and print mean test accuracy at each trial's main point per group."""
    return ["import analysis",
            f"r = analysis.load({folder!r})",
            "print(r.evals.merge(r.trials[[\"trial_key\", \"main_point\", \"method\", \"shape\", \"layerwise\", "
            "\"label_noise\"]]).query(\"split == 'test' and point == main_point\").groupby([\"method\", \"shape\", "
            "\"layerwise\", \"label_noise\"]).accuracy.mean())"]


def run_sweep(sweep: Sweep, address: str | None = None, resume: bool = False, num_cpus: int | None = None,
              every: float = 5.0, dry_run: bool = False, report: bool = True, strict: bool = False,
              compact: bool = True) -> Summary:
    """Run (or continue) a sweep; returns what happened. Raises UserError before starting anything when
    the sweep cannot run. With `report`, the sweep's report (analysis.build_report) is written to
    <sweep folder>/report/ at the end and attached to its parent MLflow run. An unreadable results file is
    named and left out (a trial whose trials row it held runs again), an unreadable checkpoint is named and
    set aside (its trial starts over); `strict` refuses either instead (trainers.folder.UnreadableFile).
    A full or read-only results folder stops the sweep (Summary.stopped), its run record closed. With
    `compact`, the per-trial Parquet files this run wrote are merged at the end (one file per table)."""
    store = Store(sweep.dir, strict=strict)
    trials = sweep.trials
    if not address:  # a fixed local machine: what it cannot give is refused before Ray starts or files are written
        preflight.check(sweep, num_cpus)
    if resume and not store.exists("sweep.yaml"):
        raise UserError(f"{sweep.path}: nothing to resume: no earlier run of {sweep.name!r} in {sweep.dir}")
    if strict:
        for table in TABLES:
            store.verify(table)
    status = store.trial_status()
    done = {t.key for t in trials if status.get(t.key, {}).get("status") in FINAL_STATUSES}
    pending = [t for t in trials if t.key not in done]
    check_checkpoints(sweep, store, pending, strict, dry_run)
    pack = packing.pack_size(sweep) if pending else 1  # refuses a packing that cannot fit, before any work
    if dry_run:
        say(describe(sweep))
        say(f"  {len(done)} already completed, {len(pending)} to run" + _packs_text(pending, pack))
        return Summary(sweep.name, len(trials), len(done), skipped=len(done))
    try:
        store.check_writable()
        if sweep.mlflow.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(sweep.mlflow[len("sqlite:///"):]), exist_ok=True)
        store.clean_partial()  # what an earlier run cut short (temp files, empty attempt markers)
        store.write_bytes("sweep.yaml", sweep.text.encode())
    except OSError as e:
        raise UserError(f"{sweep.path}: {storage_line(sweep.dir, e)}") from None
    earlier = earlier_run_line(store)
    if earlier:
        say(f"[{sweep.name}] {earlier}")
    say(f"[{sweep.name}] {len(trials)} trials: {len(done)} completed earlier, {len(pending)} to run"
        f"{_packs_text(pending, pack)} ({sweep.cpus:g} CPU, {sweep.gpus:g} GPU each{' pack' if pack > 1 else ''})")
    if not pending:
        summary = Summary(sweep.name, len(trials), len(done), skipped=len(done))
        summary.mlflow_gap = heal_mlflow(sweep, store)
        say(where_text(sweep))
        return summary

    for k, v in TUNE_ENV.items():
        os.environ.setdefault(k, v)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger(EXPERIMENT_STATE_LOGGER).addFilter(_OneLine())
    t0 = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {"state": "running", "started_at": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
              "address": address or "local", "to_run": len(pending), "total": len(trials)}
    _record_run(store, stamp, record)
    mirror = None
    if sweep.mlflow:
        mirror = sweep_mirror(sweep, sweep.mlflow, warn=lambda m: say(f"[{sweep.name}] warning: {m}")).start()
    started_ray = False
    try:
        started_ray = start_ray(address, num_cpus)
        check_resources(sweep, local=not address)
        with merging(sweep, store, compact):
            callback, grid = _fit_stages(sweep, pending, mirror, every, len(done), store, pack)
    except BaseException as e:
        if mirror is not None:  # what reached the mirror still goes to MLflow
            mirror.close("KILLED", timeout=10)
        fault = storage_fault(e)
        if fault is None:
            raise
        # Tune's own writes (its storage folder) hit the fault: the same one line, the run record closed.
        line = storage_line(sweep.dir, fault)
        store.clean_partial()
        _record_run(store, stamp, {**record, "state": "finished", "ok": False, "stopped": line,
                                    "finished_at": time.time()})
        raise UserError(f"{line}; the sweep stopped: free space (or fix permissions) and run it again") from None
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    seconds = time.monotonic() - t0
    status = store.trial_status()
    completed = sum(1 for t in trials if status.get(t.key, {}).get("status") == "completed")
    diverged = {t.name: int(status[t.key].get("diverged_epoch") or 0) for t in trials
                if status.get(t.key, {}).get("status") == "diverged"}
    at_chance = {t.name: status[t.key].get("chance_accuracy") or 0.0 for t in trials
                 if status.get(t.key, {}).get("status") == "completed" and status[t.key].get("at_chance")}
    by_key = {t.key: t.name for t in trials}
    failed = {by_key[k]: e for k, e in callback.failed.items()
              if status.get(k, {}).get("status") not in FINAL_STATUSES}
    from orchestrator.progress import error_text

    for r in grid:  # trials Tune saw fail that the callback did not (e.g. the actor died)
        for m in packing.members(r.config["trial"]) if r.config and r.error is not None else []:
            key = m["key"]
            if by_key.get(key) not in failed and status.get(key, {}).get("status") not in FINAL_STATUSES:
                failed[by_key[key]] = error_text(r.error)
    summary = Summary(sweep.name, len(trials), completed, skipped=len(done), ran=len(pending), failed=failed,
                      diverged=diverged, at_chance=at_chance, seconds=seconds, timings=dict(callback.timings),
                      stopped=callback.stopped)
    if summary.stopped:
        store.clean_partial()
    elif compact:
        compact_results(sweep, store)
    local_report = build_report(sweep, store) if report and completed and not summary.stopped else None
    if mirror is not None:
        gap = mirror.close("FINISHED" if summary.ok else "FAILED",
                           {"completed": completed, "diverged": len(diverged), "failed": len(failed),
                            "total": len(trials)},
                           metrics=summary_metrics(sweep.dir, {t.key: t.group for t in trials}))
        summary.mlflow_gap = gap.describe(sweep.mlflow) if gap else ""
        summary.timings["mlflow_s"] = mirror.busy
        if local_report and mirror.parent_id:
            summary.report_mlflow = attach_report(sweep, local_report, mirror.parent_id)
        # What the mirror missed, now or in an earlier run (a killed driver, an outage): filled from Parquet.
        summary.mlflow_gap = heal_mlflow(sweep, store, summary.mlflow_gap)
    if local_report:
        summary.report = store.path("report/index.html") if store.local else f"{sweep.dir}/report/index.html"
        if not store.local:  # the local copy of a report that went to the results URI
            shutil.rmtree(Path(local_report).parent, ignore_errors=True)
    _record_run(store, stamp, {**record, **summary.__dict__, "state": "finished", "ok": summary.ok,
                                "finished_at": time.time()})
    _report(sweep, summary)
    return summary


def check_checkpoints(sweep: Sweep, store: Store, pending: list[Trial], strict: bool, dry_run: bool) -> None:
    """Name each pending trial's unreadable checkpoint in one line and set it aside, so the trial starts over
    (strict: refuse). Only the zip directory is read: cheap, and a file truncated by a full disk fails it."""
    for t in pending:
        line = store.unreadable_checkpoint(t.key)
        if line is None:
            continue
        if strict:
            raise UserError(line)
        say(f"[{sweep.name}] warning: {line}; {t.name} starts over")
        if not dry_run:
            store.set_aside_checkpoint(t.key)


def _packs_text(pending: list[Trial], pack: int) -> str:
    if pack == 1:
        return ""
    units = packing.units(pending, pack)
    return f" in {len(units)} packs of up to {pack}" if len(units) < len(pending) else ""


def _fit(sweep: Sweep, pending: list[Trial], mirror: Mirror | None, every: float, skipped: int,
         pack: int = 1) -> tuple[Any, Any]:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from orchestrator.feeder import Feeder
    from orchestrator.progress import StorageStop, SweepCallback
    from orchestrator.status import give_memory_back
    from orchestrator.ui import GROUP_TAG

    runs = {t.key: (t.title, {GROUP_TAG: t.group, **dict(t.axes)}) for t in pending}
    callback = SweepCallback(sweep.name, len(pending), mirror, every=every, say=say, skipped=skipped, runs=runs)
    ctx = TrialContext(sweep=sweep.name, results=sweep.dir, threads=max(1, int(sweep.cpus)))
    resources = {"cpu": sweep.cpus, "gpu": sweep.gpus, **({"memory": sweep.memory * 2 ** 30} if sweep.memory else {})}
    trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), resources)
    params = [packing.unit_param(u) for u in packing.units(pending, pack)]
    name = f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    grid: list[Any] = []
    for i in range(0, len(params), TUNE_CHUNK):
        chunk = params[i:i + TUNE_CHUNK]
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=Feeder(chunk),
                num_samples=len(chunk),
                max_concurrent_trials=sweep.max_concurrent or None,
                scheduler=FIFOScheduler(),  # no early stopping: it would bias seed statistics
                reuse_actors=True,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name if i == 0 else f"{name}-from{i}",
                storage_path=sweep.storage,
                failure_config=tune.FailureConfig(max_failures=sweep.retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # pointers: see TuneSink
                callbacks=[callback],
                stop=StorageStop(),
                verbose=0,
            ),
        )
        grid += list(tuner.fit())
        give_memory_back()  # the Tune run's trials are gone: its heap back to the OS
        if callback.stopped:
            break
    say(callback.line())
    return callback, grid


def heal_mlflow(sweep: Sweep, store: Store, gap: str = "") -> str:
    """Complete the sweep's MLflow runs from Parquet (orchestrator/sync.py, as `basin sync-mlflow` does);
    returns the MLflow gap left ("" when MLflow holds every ended trial in full)."""
    if not sweep.mlflow:
        return ""
    healed = heal(sweep, sweep.mlflow, say=say)
    if healed.changed or healed.error:
        say(f"[{sweep.name}] {healed.describe(sweep.mlflow)}")
    if healed.error:
        return gap or healed.describe(sweep.mlflow)
    record_sync(store, healed)
    return ""


def merging(sweep: Sweep, store: Store, on: bool) -> contextlib.AbstractContextManager:
    """Per-trial files merged in the background while trials run (orchestrator.status.Merger), when `on`."""
    if not on:
        return contextlib.nullcontext()
    from orchestrator.status import Merger

    return Merger(store, warn=lambda m: say(f"[{sweep.name}] warning: {m}"))


def compact_results(sweep: Sweep, store: Store) -> None:
    """Merge the per-trial files of the run into one file per table (orchestrator.status.compact_run): 10,000
    small files take readers seconds, one file milliseconds. A failure leaves the per-trial files as they
    were (readers take either), with a warning."""
    from orchestrator.status import compact_run

    t0 = time.monotonic()
    try:
        merged = compact_run(store)
    except Exception as e:  # never fails a finished run: the per-trial files serve readers as well
        say(f"[{sweep.name}] warning: results not merged ({type(e).__name__}: {e}); `basin compact {sweep.dir}` "
            "tries again")
        return
    if merged:
        files = sum(n for n, _ in merged.values())
        say(f"[{sweep.name}] merged {files} per-trial files into {len(merged)} in {time.monotonic() - t0:.1f}s")


def build_report(sweep: Sweep, store: Store) -> str | None:
    """The sweep's report (analysis.build_report) in <sweep folder>/report/ (written locally and copied there
    when that is a URI); returns the local folder of the sweep's own page, None when it failed (a warning:
    the results are complete either way)."""
    from analysis.report import build_report as analysis_report

    t0 = time.monotonic()
    out = store.path("report") if store.local else tempfile.mkdtemp(prefix="basin-report-")
    try:
        reports = analysis_report(sweep.dir, out, sweeps=[sweep.name])
        if not store.local:
            for f in sorted(Path(out).rglob("*")):
                if f.is_file():
                    store.write_bytes(f"report/{f.relative_to(out).as_posix()}", f.read_bytes())
    except Exception as e:
        say(f"[{sweep.name}] warning: no report ({type(e).__name__}: {e}); `basin analyze {sweep.dir}` tries again")
        return None
    say(f"[{sweep.name}] report written in {time.monotonic() - t0:.0f}s")
    return str(reports[0].folder) if reports else None


def attach_report(sweep: Sweep, folder: str, run_id: str) -> bool:
    """Log a sweep's report folder as artifacts (report/) of its parent run; False (and a warning) on failure."""
    from orchestrator.analyze import log_report

    try:
        log_report(folder, sweep.mlflow, run_id)
        return True
    except Exception as e:
        say(f"[{sweep.name}] warning: could not attach the report to MLflow ({type(e).__name__}: {e})")
        return False


def _fit_stages(sweep: Sweep, pending: list[Trial], mirror: Mirror | None, every: float, skipped: int,
                store: Store, pack: int = 1) -> tuple[Any, list[Any]]:
    """`_fit`, in two stages when the sweep has connect trials (trainers/methods/connect.py): they start from
    the final weights of other trials, so they run in a second Tune experiment after those; one whose
    endpoints did not finish is not run and counts as failed (orchestrator/connect.py)."""
    from orchestrator import connect
    from orchestrator.progress import SweepCallback

    first, second = connect.split(pending)
    stages = [_fit(sweep, first, mirror, every, skipped, pack)] if first else []
    refused: dict[str, str] = {}
    if second and not (stages and stages[0][0].stopped):
        runnable, refused = connect.ready(second, store)
        for t in second:
            if t.key in refused:
                say(f"[{sweep.name}] {t.name}: not run: {refused[t.key]}")
        if runnable:
            say(f"[{sweep.name}] {len(runnable)} connect trial(s) after the {len(first)} they start from")
            stages.append(_fit(sweep, runnable, mirror, every, skipped + len(first)))
    callback = stages[-1][0] if stages else SweepCallback(sweep.name, 0, None, say=say)
    for earlier, _ in stages[:-1]:
        callback.failed.update(earlier.failed)
        callback.stopped = callback.stopped or earlier.stopped
        for k, v in earlier.timings.items():
            callback.timings[k] = callback.timings.get(k, 0.0) + v
    callback.failed.update(refused)
    return callback, [r for _, grid in stages for r in grid]


def earlier_run_line(store: Store) -> str:
    """What became of the sweep's last run when it did not record its end ("" when it did): its driver was
    killed, or lost with its machine or its Ray cluster's head."""
    from orchestrator.status import last_run, run_state

    run = last_run(store)
    state = run_state(run)
    if state not in ("interrupted", "running?"):
        return ""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.get("started_at") or 0))
    if state == "interrupted":
        lost = f"the run of {when} (pid {run.get('pid')}, on this machine) ended without recording its end"
    else:
        lost = (f"the run of {when} on {run.get('host')} did not record its end (if it still runs there, stop it: "
                "two runs of a sweep train its trials twice)")
    return (f"{lost}: its driver was killed, or lost with its Ray cluster; its unfinished trials go on from "
            "their checkpoints")


def _record_run(store: Store, stamp: str, record: dict[str, Any]) -> None:
    """runs/<stamp>.json: written when a run starts (state running, pid) and when it ends (its summary);
    `basin status` tells a live run from an interrupted one by it. Padded with spaces to RECORD_BYTES (JSON
    allows them), so when the folder is full by the end, the final record still overwrites the first in
    place: blocks already held need no new space."""
    rel = f"runs/{stamp}-{os.getpid()}.json"
    data = json.dumps(record, indent=1, default=str).encode()
    data += b" " * max(0, RECORD_BYTES - len(data))
    try:
        store.write_bytes(rel, data)
    except OSError as e:
        try:
            if not store.local or len(data) > RECORD_BYTES or not store.exists(rel):
                raise e
            with open(store.path(rel), "r+b") as f:
                f.write(data)
        except OSError:
            say(f"[{store.root}] warning: could not record this run ({e})")


def _report(sweep: Sweep, s: Summary) -> None:
    say(f"[{sweep.name}] {s.completed}/{s.total} trials completed"
        + (f" ({s.skipped} in earlier runs)" if s.skipped else "")
        + (f", {len(s.at_chance)} of them at chance" if s.at_chance else "")
        + (f", {len(s.diverged)} diverged" if s.diverged else "")
        + f", {len(s.failed)} failed, this run took {s.seconds:.0f}s")
    for name, epoch in list(s.diverged.items())[:20]:
        say(f"  diverged: {name}: non-finite training loss at epoch {epoch} (its epochs rows are kept)")
    if len(s.diverged) > 20:
        say(f"  ... and {len(s.diverged) - 20} more (see the trials table, status == 'diverged')")
    for name, chance in list(s.at_chance.items())[:20]:
        say(f"  at chance: {name}: test accuracy no better than chance ({chance:.3f}) with a finite loss: "
            "check its learning rate (kept in means)")
    if len(s.at_chance) > 20:
        say(f"  ... and {len(s.at_chance) - 20} more (see the trials table, at_chance == True)")
    for name, err in list(s.failed.items())[:20]:
        say(f"  failed: {name}: {err}")
    if len(s.failed) > 20:
        say(f"  ... and {len(s.failed) - 20} more (see the trials table, status == 'failed')")
    if s.mlflow_gap:
        say(f"[{sweep.name}] warning: {s.mlflow_gap}")
    if s.stopped:
        say(f"[{sweep.name}] stopped early: {s.stopped}: free space (or fix permissions) and run it again; "
            "completed trials are kept")
    say(where_text(sweep, s.report, s.report_mlflow))
    if s.failed and not s.stopped:
        say(f"  re-run `basin run {sweep.path}` to retry the failed trials (completed ones are kept)")


# -- CLI --------------------------------------------------------------------------------------------------
def add_run_args(p: Any) -> None:
    p.add_argument("sweep", help="the sweep file (YAML)")
    add_set_arg(p)
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray on 127.0.0.1)")
    p.add_argument("--resume", action="store_true",
                   help="continue an earlier run (re-running the sweep does the same; this also checks there is one)")
    p.add_argument("--dry-run", action="store_true", help="check the sweep, print its trials, start nothing")
    p.add_argument("--results", help="results folder or URI (overrides the file's `results`)")
    p.add_argument("--mlflow", help="MLflow tracking URI (overrides the file's `mlflow`; 'false' = off)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--every", type=float, default=5.0, metavar="S", help="seconds between progress lines")
    p.add_argument("--strict", action="store_true", help="refuse to start when a results file or checkpoint cannot "
                   "be read (default: name it in one line; a trial without a readable row or checkpoint starts over)")
    p.add_argument("--no-compact", action="store_true", help="keep one Parquet file per trial and table (default: "
                   "merge this run's into one per table at the end, as `basin compact` does)")
    p.add_argument("--no-report", action="store_true",
                   help="skip the report at the end (<results>/<name>/report/, attached to the MLflow parent run)")


def cmd_run(args: Any) -> int:
    mlflow = False if args.mlflow in ("false", "off", "none") else args.mlflow
    sweep = load_sweep(args.sweep, results=args.results, mlflow=mlflow, overrides=args.overrides)
    summary = run_sweep(sweep, address=args.address, resume=args.resume, num_cpus=args.num_cpus,
                        every=args.every, dry_run=args.dry_run, report=not args.no_report,
                        strict=args.strict, compact=not args.no_compact)
    return 0 if summary.ok or args.dry_run else 1
