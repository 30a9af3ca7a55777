"""Which trials a `connect` trial connects (trainers/methods/connect.py): its `connect_endpoints`, either their
trial keys (`3f2a...,9c1b...`) or an axis and its values (`seed=0,1`: for each value, the one standard-training
trial of the same sweep with that value, on the same data and architecture), resolved against the trials of
the sweep. Torch-free: the orchestrator checks a sweep with it before anything runs, and the sinks find the
endpoints' checkpoints with it when the connect trial starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

KEY_RE = re.compile(r"^[0-9a-f]{16}$")
# Fields that fix the shape of the weights: an endpoint must agree on all of them.
ARCHITECTURE = ("dataset", "model", "width", "batchnorm", "num_classes")
# An endpoint named by an axis also agrees on the data it was trained on.
SAME_DATA = (*ARCHITECTURE, "val_fraction", "label_noise", "noise_seed", "train_size", "test_size")


class EndpointError(ValueError):
    """Endpoints that cannot be used; the message is one line naming them."""


@dataclass(frozen=True)
class Candidate:
    """A trial that may be an endpoint: planned (in the sweep, not yet run), completed or failed."""

    key: str
    name: str
    status: str
    config: dict[str, Any]


def parse(value: str) -> tuple[str, list[str]]:
    """('', keys) or (axis, values)."""
    field, sep, rest = value.partition("=")
    if sep:
        return field.strip(), [v.strip() for v in rest.split(",") if v.strip()]
    return "", [v.strip() for v in value.split(",") if v.strip()]


def syntax_problem(value: str, count: int) -> str:
    """What is wrong with a `connect_endpoints` value naming `count` endpoints ("" = nothing)."""
    from trainers.config import FIELDS, METHOD_FIELDS

    expected = f"{count} trial keys (16 hex characters) or an axis and {count} values (seed=0,1)"
    field, items = parse(value)
    if len(items) != count or len(set(items)) != count:
        return expected
    if not field:
        return "" if all(KEY_RE.match(k) for k in items) else expected
    if field not in FIELDS or field in METHOD_FIELDS["connect"] or field in ARCHITECTURE:
        return f"{expected}; {field!r} is not an axis endpoints can differ in"
    return ""


def fmt(v: Any) -> str:
    """A config value as a sweep file writes it (and as trial names show it)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _describe(c: Candidate) -> str:
    return f"{c.name or 'trial'} [{c.key}]"


def resolve(cfg: dict[str, Any], candidates: list[Candidate], need_finished: bool = True) -> list[str]:
    """The endpoint trial keys of connect config `cfg` (a dict), in order. Raises EndpointError naming the
    endpoints that are missing, unfinished (unless planned and not `need_finished`), ambiguous, not standard
    training or of another architecture."""
    field, items = parse(cfg["connect_endpoints"])
    by_key = {c.key: c for c in candidates}
    keys = []
    for item in items:
        if not field:
            c = by_key.get(item)
            if c is None:
                raise EndpointError(f"connect_endpoints: no trial {item} in this sweep or its results")
        else:
            ref = f"{field}={item}"
            matches = [c for c in candidates if fmt(c.config.get(field)) == item and _standard(c.config)
                       and all(c.config.get(f) == cfg.get(f) for f in SAME_DATA)]
            if not matches:
                same = ", ".join(f"{f} {fmt(cfg.get(f))}" for f in ARCHITECTURE)
                raise EndpointError(f"connect_endpoints: no standard-training trial with {ref} on the same data and "
                                     f"architecture ({same}) in this sweep or its results")
            if len(matches) > 1:
                raise EndpointError(f"connect_endpoints: {ref} matches {len(matches)} trials "
                                     f"({', '.join(_describe(c) for c in matches)}); name them by key")
            c = matches[0]
        if not _standard(c.config):
            raise EndpointError(f"connect_endpoints: trial {_describe(c)} is not standard training "
                                 f"(method subspace, shape point)")
        other = [f"{f} {fmt(c.config.get(f))}, not {fmt(cfg.get(f))}" for f in ARCHITECTURE
                 if c.config.get(f) != cfg.get(f)]
        if other:
            raise EndpointError(f"connect_endpoints: trial {_describe(c)} is of another architecture "
                                f"({'; '.join(other)})")
        if c.status != "completed" and (need_finished or c.status != "planned"):
            raise EndpointError(f"connect_endpoints: trial {_describe(c)} has not finished (status {c.status})")
        if not c.config.get("checkpoint_every"):
            raise EndpointError(f"connect_endpoints: trial {_describe(c)} keeps no checkpoint (checkpoint_every 0)")
        keys.append(c.key)
    return keys


def _standard(config: dict[str, Any]) -> bool:
    return config.get("method") == "subspace" and config.get("shape") == "point"


def completed_candidates(rows: list[dict[str, Any]]) -> list[Candidate]:
    """Candidates from trials-table rows (trial_key, attempt, status, name, config_json): per trial its
    completed attempt if any, else its latest."""
    import json

    best: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r["status"] == "completed", r["attempt"])):
        best[r["trial_key"]] = r
    return [Candidate(k, r.get("name") or "", r["status"], json.loads(r["config_json"] or "{}"))
            for k, r in best.items()]
