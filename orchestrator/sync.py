"""MLflow rebuilt from Parquet: `basin sync-mlflow RESULTS [--mlflow URI]`, and the healing a `basin run` does at
its end (the same function, `heal`).

Parquet is the source of truth and MLflow a mirror of it, so whatever the mirror missed (a killed driver, a
server that was down, metrics dropped after a long outage) can be rebuilt from the results folder: a trial that
Parquet says ended gets exactly one child run (found by its `basin.trial_key` tag), with its params and tags,
every epoch, its test metrics, its own start and end times and its final status. Runs are read once, in pages
(orchestrator/tracking.py `Mirror._find_runs`); a run that is complete costs no call at all, so a second sync
changes nothing. Trials with no row yet (never ran, or interrupted) are left alone: a re-run continues them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from orchestrator.cli import UserError
from orchestrator.store import Store
from orchestrator.sweep import Sweep, Trial
from orchestrator.tracking import (
    EPOCH_METRICS,
    FINAL_STEP,
    GROUP_ROLE,
    MAX_METRICS,
    MAX_PARAMS,
    ROLE_TAG,
    FoundRun,
    Mirror,
    eval_metrics,
    group_metrics,
    group_values,
    param,
    probe_metrics,
    summary_metrics,
)
from trainers.schema import FINAL_STATUSES

SEND_EVERY = 200  # trials queued between two sends: memory stays bounded on a sweep of 10,000 trials


def sweep_params(sweep: Sweep) -> dict[str, Any]:
    """The parent run's params: the sweep's base config, axes and resources."""
    return {"trials": len(sweep.trials), "cpus": sweep.cpus, "gpus": sweep.gpus, "retries": sweep.retries,
            "max_concurrent": sweep.max_concurrent, **{f"base.{k}": v for k, v in sweep.base.items()},
            **{f"axis.{k}": v for k, v in sweep.axes.items()}}


def sweep_mirror(sweep: Sweep, uri: str, warn: Any = None, live: bool = True) -> Mirror:
    """The MLflow mirror of a sweep (not started): its experiment, parent run description, params, views."""
    from orchestrator.sweep import is_uri
    from orchestrator.ui import experiment_tags

    local_store = uri.startswith("sqlite:") and not is_uri(sweep.dir)
    return Mirror(uri, sweep.name, sweep_text=sweep.text,
                  sweep_tags={"trials": len(sweep.trials), "axes": json.dumps(list(sweep.axes))},
                  artifact_location=f"file://{sweep.dir}/mlartifacts" if local_store else None, warn=warn,
                  description=(sweep.description + "\n\n" if sweep.description else "")
                  + f"The sweep `{sweep.name}` ({len(sweep.trials)} trials): its file (artifact sweep.yaml), "
                    "its seed groups as runs nested under it (tag basin.role = group: the mean, std and count "
                    "over seeds of each headline metric) and the report of its latest run (artifact "
                    "report.html, one page with its figures; the folder under report/).",
                  sweep_params=sweep_params(sweep), experiment_tags=experiment_tags(sweep), live=live)


def trial_tags(t: Trial) -> dict[str, str]:
    """A trial's run tags besides its config (orchestrator/progress.py sets the same)."""
    from orchestrator.ui import GROUP_TAG

    return {"basin.trial_name": t.name, GROUP_TAG: t.group, **dict(t.axes)}


@dataclass
class Healed:
    """What a sync did."""
    created: int = 0     # runs that did not exist
    completed: int = 0   # runs that existed but lacked something (epochs, test metrics, their end)
    deleted: int = 0     # second runs of one trial
    complete: int = 0    # runs that were complete already
    parent: bool = False  # the parent run was closed (again)
    groups: int = 0      # group runs created or updated (heal_groups; not counted in `changed`: every run
                         # that completes trials updates them)
    error: str = ""      # MLflow could not be reached or refused: what is left is left for a later sync

    @property
    def changed(self) -> int:
        return self.created + self.completed + self.deleted  # trial runs: what the live mirror missed

    def describe(self, uri: str) -> str:
        if self.error:
            return f"MLflow at {uri} not synced ({self.error}); `basin sync-mlflow` fills it in once it is up"
        groups = f"; {self.groups} seed-group runs made or updated" if self.groups else ""
        if not self.changed:
            return f"MLflow at {uri} holds every run already ({self.complete} runs){groups}"
        return (f"MLflow at {uri} synced from Parquet: {self.created} runs created, {self.completed} completed"
                + (f", {self.deleted} duplicate runs deleted" if self.deleted else "")
                + f", {self.complete} were complete{groups}")


def _chosen(store: Store) -> dict[str, dict[str, Any]]:
    """Per trial key, the trials row of its chosen attempt (the latest completed one, else the latest)."""
    cols = ["trial_key", "attempt", "status", "error", "started_at", "finished_at", "seconds", "main_point",
            "main_ensemble", "diverged_epoch", "at_chance"]
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(store.read_arrow("trials", cols).to_pylist(),
                    key=lambda r: (r["status"] in FINAL_STATUSES, r["attempt"])):
        out[r["trial_key"]] = r
    return out


def _rows(store: Store, table: str, chosen: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A table's rows of each trial's chosen attempt."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in store.read_arrow(table).to_pylist():
        c = chosen.get(r["trial_key"])
        if c is not None and r["attempt"] == c["attempt"]:
            out.setdefault(r["trial_key"], []).append(r)
    return out


def expected_metrics(t: Trial, row: dict[str, Any], epochs: list[dict[str, Any]], evals: list[dict[str, Any]],
                     probes: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
    """What a completed trial's run holds, (key, value, step), as the live mirror logs it: every epoch's
    curves (step = epoch), then its evaluations (tracking.eval_metrics) and probes at FINAL_STEP."""
    out = [(name, float(e[k]), int(e["epoch"])) for e in sorted(epochs, key=lambda e: e["epoch"])
           for k, name in EPOCH_METRICS.items() if isinstance(e.get(k), (int, float))]
    out += eval_metrics(evals, row["main_point"] or "", row["main_ensemble"] or "")
    out += [(k, v, FINAL_STEP) for k, v in probe_metrics(probes).items()]
    return out


def _is_complete(found: FoundRun | None, row: dict[str, Any], n_epochs: int, n_keys: int, n_params: int) -> bool:
    if found is None:
        return False
    if row["status"] not in FINAL_STATUSES:
        return found.status == "FAILED"
    return (found.status == "FINISHED" and found.trial_status == row["status"] and found.epochs_logged >= n_epochs
            and found.metrics >= n_keys and found.params >= n_params)


def _missing(client: Any, run_id: str, metrics: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
    """The (key, step) pairs a run lacks: keys it does not have at all, and the steps missing from the history
    of a key logged at several steps (epoch curves, profiles)."""
    have = client.get_run(run_id).data.metrics
    steps: dict[str, set[int]] = {}
    for k, _, s in metrics:
        steps.setdefault(k, set()).add(s)
    logged = {k: {m.step for m in client.get_metric_history(run_id, k)} for k, at in steps.items()
              if k in have and len(at) > 1}
    return [m for m in metrics if m[0] not in have or (m[0] in logged and m[2] not in logged[m[0]])]


def heal(sweep: Sweep, uri: str, say: Any = print) -> Healed:
    """Make the sweep's MLflow runs at `uri` whole from its Parquet results (see the module's docstring);
    never raises for MLflow's sake: an unreachable server is returned as `error`."""
    store = Store(sweep.dir)
    done = Healed()
    chosen = _chosen(store)
    trials = [t for t in sweep.trials if t.key in chosen]
    mirror = sweep_mirror(sweep, uri, warn=lambda m: say(f"[{sweep.name}] warning: {m}"), live=False)
    try:
        mirror.open()
        client = mirror._client
        for run_id in mirror.duplicates:
            client.delete_run(run_id)
            done.deleted += 1
        epochs = evals = probes = None  # read only when some run needs them
        for i, t in enumerate(trials):
            row, found = chosen[t.key], mirror.found.get(t.key)
            params = t.config.to_dict()
            final = row["status"] in FINAL_STATUSES  # completed, or diverged (its epochs, no evaluation)
            if final and epochs is None:
                epochs, evals, probes = (_rows(store, name, chosen) for name in ("epochs", "evals", "probes"))
            metrics = [] if not final else \
                expected_metrics(t, row, epochs.get(t.key, []), evals.get(t.key, []), probes.get(t.key, []))
            n_epochs = len(epochs.get(t.key, [])) if epochs is not None else 0
            if _is_complete(found, row, n_epochs, len({m[0] for m in metrics}), len(params)):
                done.complete += 1
                continue
            if found is None:
                done.created += 1
                first = store.attempts(t.key)
                start = first[0].get("started_at") if first else row["started_at"]
            else:
                done.completed += 1
                metrics = _missing(client, found.run_id, metrics)
                start = None
            mirror.trial(t.key, t.title, params, trial_tags(t), params_again=found is not None)
            mirror.times(t.key, start=start, end=row["finished_at"])
            by_step: dict[int, dict[str, float]] = {}
            for k, v, s in metrics:
                by_step.setdefault(s, {})[k] = v
            for step, values in sorted(by_step.items()):
                mirror.metrics(t.key, values, step=step)
            tags = {"basin.attempt": row["attempt"], "basin.status": row["status"]}
            if final:
                tags.update({"basin.epochs_logged": n_epochs, "basin.seconds": f"{row['seconds'] or 0:.1f}"})
                if row["status"] == "diverged":
                    tags["basin.diverged_epoch"] = int(row["diverged_epoch"] or 0)
                if row["at_chance"]:
                    tags["basin.at_chance"] = "true"
            else:
                tags["basin.last_error"] = (row["error"] or "")[:300]
            mirror.tags(t.key, tags)
            mirror.status(t.key, "FINISHED" if final else "FAILED")
            if (i + 1) % SEND_EVERY == 0:
                mirror.send()
        mirror.send()
        times = {k: (r["started_at"], r["finished_at"]) for k, r in chosen.items() if r["status"] == "completed"}
        done.groups = heal_groups(sweep, client, mirror.experiment_id, mirror.parent_id, times)
    except Exception as e:
        done.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        return done
    completed = sum(1 for t in sweep.trials if chosen.get(t.key, {}).get("status") == "completed")
    failed = sum(1 for t in sweep.trials if chosen.get(t.key, {}).get("status") == "failed")
    final = sum(1 for t in sweep.trials if chosen.get(t.key, {}).get("status") in FINAL_STATUSES)
    wanted = "FINISHED" if final == len(sweep.trials) else "FAILED"
    if mirror.parent_status != wanted or not mirror.parent_metrics:
        done.parent = True
        metrics = summary_metrics(sweep.dir, {t.key: t.group for t in sweep.trials}) if not mirror.parent_metrics \
            else None
        gap = mirror.close(wanted, {"completed": completed, "failed": failed, "total": len(sweep.trials)}, metrics)
        done.error = gap.describe(uri) if gap else ""
    return done


def group_runs(sweep: Sweep) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Per seed group label (sweep.Trial.group), the (params, tags) of its run: the sweep's axes but the seed
    as the trials' runs show them (a field axis as a param, a group axis as a tag in words)."""
    from orchestrator.ui import GROUP_TAG, axis_columns

    columns = [(mode, name) for mode, name in axis_columns(sweep) if name != "seed"]
    out: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for t in sweep.trials:
        if t.group in out:
            continue
        axes = dict(t.axes)
        params = {name: param(getattr(t.config, name)) for mode, name in columns if mode == "param"}
        tags = {name: str(axes.get(name, "")) for mode, name in columns if mode == "tag"}
        out[t.group] = params, {**tags, GROUP_TAG: t.group}
    return out


def heal_groups(sweep: Sweep, client: Any, experiment_id: str, parent_id: str,
                times: dict[str, tuple[float | None, float | None]] | None = None) -> int:
    """One run per seed group, nested under the sweep's run (tag basin.role = group), holding the mean, std
    and count over its completed trials of each headline metric (tracking.group_metrics, at FINAL_STEP) and
    the group's axis values as params: created, or updated where Parquet says otherwise; a group run that
    already holds these values costs no call. The same rule for `basin run`'s end and `basin sync-mlflow`
    (both heal). A new group run spans its trials' `times` (trial key -> start, end in seconds; default:
    now), so MLflow's Created and Duration are the group's. Returns how many group runs were created or
    updated."""
    from mlflow.entities import Metric, Param

    from orchestrator.ui import GROUP_TAG

    values = group_values(sweep.dir, {t.key: t.group for t in sweep.trials})
    found: dict[str, Any] = {}
    token = None
    while True:  # pages of 1000: a study of thousands of groups is a few calls
        page = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = '{GROUP_ROLE}' and "
                                  f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000, page_token=token)
        for r in page:
            found.setdefault(r.data.tags.get(GROUP_TAG, ""), r)
        token = page.token
        if not token:
            break
    changed = 0
    now = int(time.time() * 1000)
    span: dict[str, list[float]] = {}
    for t in sweep.trials:
        start, end = (times or {}).get(t.key, (None, None))
        have = span.setdefault(t.group, [])
        have += [x for x in (start, end) if x is not None]
    for label, (params, tags) in group_runs(sweep).items():
        if label not in values:  # no completed trial yet
            continue
        first, last = (int(min(span[label]) * 1000), int(max(span[label]) * 1000)) if span.get(label) else (now, now)
        want = group_metrics(values[label])
        run = found.get(label)
        if run is None:
            run_id = client.create_run(experiment_id, run_name=label, start_time=first, tags={
                "mlflow.parentRunId": parent_id, ROLE_TAG: GROUP_ROLE, "basin.sweep": sweep.name, **tags}).info.run_id
            have, have_params = {}, {}
        else:
            run_id, have, have_params = run.info.run_id, run.data.metrics, run.data.params
        metrics = [Metric(k, v, now, FINAL_STEP) for k, v in want.items() if not _same(have.get(k), v)]
        new_params = [Param(k, v) for k, v in params.items() if k not in have_params]
        if not metrics and not new_params and run is not None and run.info.status == "FINISHED":
            continue
        while metrics or new_params:  # at most 1000 entities, 100 params a call
            p, new_params = new_params[:MAX_PARAMS], new_params[MAX_PARAMS:]
            m, metrics = metrics[:MAX_METRICS - len(p)], metrics[MAX_METRICS - len(p):]
            client.log_batch(run_id, metrics=m, params=p)
        client.set_terminated(run_id, status="FINISHED", end_time=last)
        changed += 1
    return changed


def _same(a: float | None, b: float) -> bool:
    return a is not None and (a == b or (math.isnan(a) and math.isnan(b)))


def record_sync(store: Store, healed: Healed) -> None:
    """Clear the MLflow gap of the sweep's latest run record once a sync filled it (`basin status` reads it)."""
    from orchestrator.status import last_run_name

    name = last_run_name(store)
    data = store.read_bytes(f"runs/{name}") if name else None
    if not data or healed.error:
        return
    record = json.loads(data)
    if record.get("mlflow_gap"):
        record["mlflow_gap_healed"], record["mlflow_gap"] = record["mlflow_gap"], ""
        store.write_bytes(f"runs/{name}", json.dumps(record, indent=1).encode())


# -- CLI --------------------------------------------------------------------------------------------------
def add_sync_mlflow_args(p: Any) -> None:
    p.add_argument("results", help="a sweep's results folder (<results>/<sweep>), or a results folder: every sweep")
    p.add_argument("--mlflow", help="tracking URI to fill (default: the one the sweep ran with)")


def cmd_sync_mlflow(args: Any) -> int:
    from orchestrator.status import last_run, running, saved_sweep, sweep_dirs

    folders = sweep_dirs(args.results)
    if not folders:
        raise UserError(f"{args.results}: no sweep results here")
    ok = True
    for folder in folders:
        sweep = saved_sweep(folder)
        if sweep is None:
            raise UserError(f"{folder}/sweep.yaml: missing or unreadable: the sweep file `basin run` saves there")
        store = Store(folder)
        if running(last_run(store)):
            raise UserError(f"{folder}: a `basin run` of this sweep is still running: sync after it ends")
        uri = args.mlflow or sweep.mlflow
        if not uri:
            raise UserError(f"{folder}: the sweep has no MLflow URI (mlflow: false): pass --mlflow URI")
        healed = heal(sweep, uri)
        print(f"[{sweep.name}] {healed.describe(uri)}")
        if uri == sweep.mlflow:
            record_sync(store, healed)
        ok = ok and not healed.error
    return 0 if ok else 1
