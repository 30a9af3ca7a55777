"""Sweeps with `connect` trials (trainers/methods/connect.py), which start from the final weights of other
trials of the same sweep (their endpoints, named by `connect_endpoints`: trainers/references.py).

- `check`: before anything runs, every connect trial's endpoints must be trials of the sweep (they run
  first) or finished trials in its results folder, standard training, of the same architecture; otherwise one
  line names the connect trial and its endpoint.
- `split` / `ready`: `basin run` runs the other trials first, then, in a second stage, the connect trials whose
  endpoints have finished; the rest are refused with one line each.
- `endpoint_states`: inside a connect trial, its endpoints' checkpoints from the results folder.
"""

from __future__ import annotations

from typing import Any

from orchestrator.cli import UserError
from orchestrator.store import Store
from orchestrator.sweep import Sweep, Trial
from trainers import references
from trainers.folder import read_arrow


def _is_connect(t: Trial) -> bool:
    return t.config.method == "connect"


def _recorded(store: Store) -> list[references.Candidate]:
    """Every trial of the results folder (its completed attempt, else its latest)."""
    rows = read_arrow(store.root, "trials", ["trial_key", "attempt", "status", "name", "config_json"]).to_pylist()
    return references.completed_candidates(rows)


def check(sweep: Sweep) -> None:
    """Refuse a sweep whose connect trials name endpoints that are missing, unfinished, not standard training
    or of another architecture (UserError, one line)."""
    connects = [t for t in sweep.trials if _is_connect(t)]
    if not connects:
        return
    recorded = {c.key: c for c in _recorded(Store(sweep.dir))}
    # the sweep's trials (finished in an earlier run, or planned: they run before the connect trials), and the
    # trials of the results folder that the sweep file does not list (usable only when they finished)
    candidates = [recorded[t.key] if t.key in recorded and recorded[t.key].status == "completed" else
                  references.Candidate(t.key, t.name, "planned", t.config.to_dict()) for t in sweep.trials]
    candidates += [c for k, c in recorded.items() if k not in {t.key for t in sweep.trials}]
    for t in connects:
        try:
            references.resolve(t.config.to_dict(), candidates, need_finished=False)
        except references.EndpointError as e:
            raise UserError(f"{sweep.path}: trial {t.name}: {e}") from None


def split(trials: list[Trial]) -> tuple[list[Trial], list[Trial]]:
    """(the trials that run first, the connect trials that run after them)."""
    return [t for t in trials if not _is_connect(t)], [t for t in trials if _is_connect(t)]


def ready(trials: list[Trial], store: Store) -> tuple[list[Trial], dict[str, str]]:
    """The connect trials whose endpoints have finished, and {trial key: why not} for the others."""
    finished = _recorded(store)
    out, refused = [], {}
    for t in trials:
        try:
            references.resolve(t.config.to_dict(), finished)
            out.append(t)
        except references.EndpointError as e:
            refused[t.key] = str(e)
    return out, refused


def endpoint_states(store: Store, cfg: Any) -> list[dict[str, Any]]:
    """The final states of the endpoints of connect config `cfg`, from the sweep's results folder."""
    keys = references.resolve(cfg.to_dict(), _recorded(store))
    states = [store.load_checkpoint(k) for k in keys]
    missing = [k for k, s in zip(keys, states, strict=True) if s is None]
    if missing:
        raise references.EndpointError(f"connect_endpoints: no checkpoint of trial {', '.join(missing)}")
    return states
