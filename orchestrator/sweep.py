"""The sweep file: one YAML file that names a study, its base trial config and the axes to cross.

Everything is checked before anything starts: a bad sweep gives one line naming the file and the field
(`sweeps/x.yaml: axes.shape[2]: expected one of point, line, curve, simplex, got 'cube'`).

Expansion, in order: the product of `axes` (first axis outermost) -> `include` rules -> `set` (fields forced on
every trial: what `--set FIELD=VALUE` on the command line writes, for a smoke test of a big sweep) -> `exclude` rules ->
each trial built and validated with trainers.config.make_config (which gives fields that mean nothing for a
shape one canonical value) -> trials with the same key (same effective config) kept once. docs/sweeps.md
describes the file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import itertools
import math
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cli import UserError
from trainers.config import FIELDS, ConfigError, TrialConfig, config_key, irrelevant, make_config, type_name, type_ok

SWEEP_FIELDS = ("name", "description", "base", "axes", "include", "exclude", "set", "resources", "max_concurrent",
                "retries", "checkpoint_every", "pack", "results", "mlflow", "storage", "max_trials")
# A grid larger than this is refused before it is expanded (its count comes from the axes' sizes): a typo
# such as a 1000-value axis should cost one line, not the driver's memory. A sweep may raise it (max_trials).
MAX_TRIALS = 100_000
RESOURCE_FIELDS = ("cpus", "gpus", "gpu_memory", "memory")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Tracking URI schemes MLflow 3 understands (a plain path is refused: the file store is deprecated).
MLFLOW_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")
# Results/storage URI schemes pyarrow's filesystems open.
FS_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
REPLICATE = ("seed",)  # fields whose values are repeats of one configuration: a seed group is the rest
DEFAULTS = dict(resources={"cpus": 1, "gpus": 0}, max_concurrent=0, retries=2, results="results")


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: its stable key, a readable name (the varying fields' values) and config.
    `title` says the same in words (`line layerwise no batchnorm label_noise=0.2 seed=1`: the MLflow run
    name), `group` likewise without the replicate fields (its seed group), and `axes` the trial's entry of
    each group axis in words (`subspace`: `line layerwise`)."""
    key: str
    name: str
    config: TrialConfig
    title: str = ""
    group: str = ""
    axes: tuple[tuple[str, str], ...] = ()

    @property
    def dirname(self) -> str:
        """A folder name: the readable name made path-safe and short enough, plus the key for uniqueness."""
        safe = re.sub(r"[^A-Za-z0-9=,._+-]", "_", self.name)[:180]
        return f"{safe}-{self.key[:8]}"

    def param(self) -> dict[str, Any]:
        """What travels to the Ray Tune trial (plain values only)."""
        return {"key": self.key, "name": self.name, "config": self.config.to_dict()}


@dataclass
class Sweep:
    name: str
    path: str                      # the file it came from
    text: str                      # the file's text, saved beside the results
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    cpus: float = 1.0
    gpus: float = 0.0
    max_concurrent: int = 0        # 0: as many as the resources allow
    retries: int = 2
    results: str = "results"       # absolute local folder or URI; the sweep writes to results/name
    mlflow: str = ""               # tracking URI; "" = no MLflow
    storage: str = ""              # Ray Tune storage path (local folder or URI)
    description: str = ""
    pack: int | str = 1            # trials per packed Tune trial, or "auto" (orchestrator/packing.py)
    gpu_memory: float = 0.0        # GiB of one GPU (0: ask the local GPU) for the packing check
    memory: float = 0.0            # GiB of host memory per Tune trial (0: not reserved)
    max_trials: int = MAX_TRIALS
    forced: dict[str, Any] = field(default_factory=dict)   # `set`: fields every trial takes, whatever the axes say
    from_cli: tuple[str, ...] = ()                          # which of them --set gave (errors name the flag)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def dir(self) -> str:
        """The sweep's results folder: Parquet tables, checkpoints, attempt markers, sweep.yaml copy."""
        return join(self.results, self.name)

    @cached_property
    def trials(self) -> list[Trial]:
        return expand(self)

    def where(self, field_: str) -> str:
        return f"{self.path}: {field_}"


def join(root: str, *parts: str) -> str:
    """Join a local path or a URI (always '/'-separated)."""
    return "/".join([root.rstrip("/"), *parts])


def is_uri(path: str) -> bool:
    return "://" in path


# -- loading --------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> tuple[Any, str]:
    """Parse a YAML file; errors become one UserError line with the line number."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read the sweep file ({e.strerror or e})") from None
    try:
        return yaml.load(text, Loader=_Loader), text
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: {where}not valid YAML: {problem}") from None


def load_sweep(path: str | Path, results: str | None = None, mlflow: str | None = None,
               storage: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read, check and expand a sweep file. `results`/`mlflow`/`storage` override the file's values;
    `overrides` (`FIELD=VALUE`, from --set) are forced on every trial and written into the sweep's `set`."""
    data, text = read_yaml(path)
    forced = parse_overrides(overrides)
    data, text = with_overrides(str(path), data, text, forced, overrides)
    sweep = parse_sweep(data, str(path), text, results=results, mlflow=mlflow, storage=storage)
    sweep.from_cli = tuple(forced)
    _ = sweep.trials  # expansion validates every trial
    from orchestrator.connect import check  # connect trials: their endpoints exist and can be connected

    check(sweep)
    return sweep


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`--set FIELD=VALUE` items -> {field: value} (values as YAML reads them: 2, 0.1, true, line)."""
    out: dict[str, Any] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--set {item}: expected FIELD=VALUE, e.g. --set epochs=2")
        try:
            out[name] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {item}: the value is not valid YAML") from None
        if name not in FIELDS:
            raise UserError(f"--set {name}: unknown trial field{_suggest(name, sorted(FIELDS))}")
        if not type_ok(name, out[name]):
            raise UserError(f"--set {name}: expected {type_name(name)}, got {out[name]!r}")
    return out


def with_overrides(path: str, data: Any, text: str, forced: dict[str, Any],
                   overrides: list[str] | tuple[str, ...]) -> tuple[Any, str]:
    """The sweep with `--set` items merged into its `set`, and its text saying so: the file as written plus a
    `set:` line at the end, so the copy saved with the results (and on MLflow) is the sweep that ran.
    `forced`: parse_overrides(overrides); `overrides` as given, for the note in the text."""
    if not forced:
        return data, text
    if not isinstance(data, dict):
        return data, text  # parse_sweep names the problem
    merged = {**_mapping(path, "set", data.get("set"), "a mapping of trial fields"), **forced}
    note = "# basin " + " ".join(f"--set {o}" for o in overrides) + " (fields forced on every trial)\n"
    had_set, data = "set" in data, {**data, "set": merged}
    line = yaml.safe_dump({"set": merged}, default_flow_style=True, sort_keys=False, width=10**6)
    appended = text.rstrip("\n") + "\n" + note + line
    with contextlib.suppress(yaml.YAMLError):
        if not had_set and yaml.safe_load(appended) == data:
            return data, appended
    # The file has a `set` of its own (or is not a block mapping): the saved copy is the merged sweep, re-written.
    return data, note + yaml.safe_dump(data, sort_keys=False)


def _fail(path: str, where: str, what: str) -> UserError:
    return UserError(f"{path}: {where}: {what}")


def _suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(name), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_field(path: str, where: str, name: Any, value: Any) -> None:
    """A trial field named in the sweep: known, and a value of its type."""
    if name not in FIELDS:
        raise _fail(path, where, f"unknown trial field{_suggest(str(name), sorted(FIELDS))}")
    if not type_ok(name, value):
        raise _fail(path, where, f"expected {type_name(name)}, got {value!r}")


def _mapping(path: str, where: str, value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def _rules(path: str, where: str, value: Any, allow_when: bool) -> list[dict[str, Any]]:
    """include/exclude: a list of mappings of trial fields; a list value means any/each of its items."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, where, f"expected a list of mappings, got {type(value).__name__} {value!r}")
    out = []
    for i, rule in enumerate(value):
        w = f"{where}[{i}]"
        rule = _mapping(path, w, rule, "a mapping of trial fields")
        if not rule:
            raise _fail(path, w, "expected at least one trial field, got an empty mapping")
        if allow_when and ("when" in rule or "then" in rule):
            extra = set(rule) - {"when", "then"}
            if extra or "when" not in rule or "then" not in rule:
                raise _fail(path, w, "a conditional rule has exactly two keys, when: {...} and then: {...}")
            when = _mapping(path, f"{w}.when", rule["when"], "a mapping of trial fields")
            then = _mapping(path, f"{w}.then", rule["then"], "a mapping of trial fields")
            if not when or not then:
                raise _fail(path, w, "when and then each need at least one trial field")
            _check_rule_fields(path, f"{w}.when", when)
            _check_rule_fields(path, f"{w}.then", then)
        else:
            _check_rule_fields(path, w, rule)
        out.append(rule)
    return out


def _check_rule_fields(path: str, where: str, rule: dict[str, Any]) -> None:
    for name, v in rule.items():
        if isinstance(v, list):
            if not v:
                raise _fail(path, f"{where}.{name}", "expected a value or a non-empty list of values, got []")
            for j, item in enumerate(v):
                _check_field(path, f"{where}.{name}[{j}]", name, item)
        else:
            _check_field(path, f"{where}.{name}", name, v)


def _axes(path: str, value: Any) -> dict[str, list[Any]]:
    axes = _mapping(path, "axes", value, "a mapping of field -> list of values")
    for name, values in axes.items():
        w = f"axes.{name}"
        if not isinstance(values, list) or not values:
            fixed = "" if isinstance(values, list) else f" (a single value belongs in base: {name}: {values!r})"
            raise _fail(path, w, f"expected a non-empty list of values, got {values!r}{fixed}")
        if name in FIELDS:
            for i, v in enumerate(values):
                _check_field(path, f"{w}[{i}]", name, v)
            if len({repr(v) for v in values}) != len(values):
                raise _fail(path, w, f"values repeat: {values!r}")
        elif all(isinstance(v, dict) for v in values):  # a group axis: each value sets several fields
            for i, group in enumerate(values):
                if not group:
                    raise _fail(path, f"{w}[{i}]", "expected a mapping of trial fields, got {}")
                for f, v in group.items():
                    _check_field(path, f"{w}[{i}].{f}", f, v)
        else:
            raise _fail(path, w, "unknown trial field" + _suggest(str(name), sorted(FIELDS))
                        + "; a group axis (any other name) needs a list of mappings of trial fields")
    return axes


def _absolute(p: str) -> str:
    if is_uri(p):
        return p
    return str(Path(os.path.expanduser(p)).absolute())


def _location(path: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"expected a folder or a URI, got {value!r}")
    if is_uri(value):
        scheme = value.split("://", 1)[0]
        if scheme not in FS_SCHEMES:
            raise _fail(path, where, f"expected a local folder or a URI with scheme {', '.join(FS_SCHEMES)}, "
                                     f"got {value!r}")
        if scheme == "file":
            value = value[len("file://"):]
    return _absolute(value)


def tracking_uri(path: str, value: Any, sweep_dir: str, where: str = "mlflow") -> str:
    """The MLflow tracking URI. Default: SQLite in the sweep's folder; when results are a URI (no local
    folder for SQLite), $MLFLOW_TRACKING_URI, else SQLite on this machine in ~/.basin/mlflow/. Relative
    sqlite paths are made absolute."""
    if value is None:
        if not is_uri(sweep_dir):
            return f"sqlite:///{sweep_dir}/mlflow.db"
        if os.environ.get("MLFLOW_TRACKING_URI"):
            value = os.environ["MLFLOW_TRACKING_URI"]
            where = "$MLFLOW_TRACKING_URI"
        else:
            name = sweep_dir.rstrip("/").rpartition("/")[2]
            return f"sqlite:///{Path('~/.basin/mlflow').expanduser()}/{name}.db"
    if value is False or value == "":
        return ""
    if not isinstance(value, str):
        raise _fail(path, where, f"expected a tracking URI or false, got {value!r}")
    scheme = value.split(":", 1)[0] if ":" in value else ""
    if scheme not in MLFLOW_SCHEMES:
        raise _fail(path, where, f"expected a tracking URI with scheme {', '.join(MLFLOW_SCHEMES)}, got {value!r}")
    if scheme == "sqlite":
        rest = value[len("sqlite:///"):] if value.startswith("sqlite:///") else None
        if rest is None or not rest:
            raise _fail(path, where, f"expected sqlite:///relative/path.db or sqlite:////absolute/path.db, "
                                     f"got {value!r}")
        if not rest.startswith("/"):
            value = f"sqlite:///{_absolute(rest)}"
    if scheme in ("http", "https") and not re.match(r"^https?://[^/:]+(:\d+)?(/.*)?$", value):
        raise _fail(path, where, f"expected http(s)://host[:port], got {value!r}")
    return value


def parse_sweep(data: Any, path: str = "<sweep>", text: str = "", results: str | None = None,
                mlflow: str | None = None, storage: str | None = None) -> Sweep:
    """Check the sweep file's structure and values (not yet the trials; see expand)."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with at least name and axes or base, "
                        f"got {type(data).__name__}")
    for k in data:
        if k not in SWEEP_FIELDS:
            raise _fail(path, str(k), "unknown field" + _suggest(str(k), SWEEP_FIELDS))
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail(path, "name", "expected a name of letters, digits, '_', '.', '-' (it names folders and the "
                                  f"MLflow experiment), got {name!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise _fail(path, "description", f"expected text, got {description!r}")

    base = _mapping(path, "base", data.get("base"), "a mapping of trial fields")
    for k, v in base.items():
        _check_field(path, f"base.{k}", k, v)
    axes = _axes(path, data.get("axes"))
    include = _rules(path, "include", data.get("include"), allow_when=True)
    exclude = _rules(path, "exclude", data.get("exclude"), allow_when=False)
    forced = _mapping(path, "set", data.get("set"), "a mapping of trial fields")
    for k, v in forced.items():
        _check_field(path, f"set.{k}", k, v)

    res = _mapping(path, "resources", data.get("resources", DEFAULTS["resources"]),
                   "a mapping: cpus, gpus, gpu_memory, memory")
    for k in res:
        if k not in RESOURCE_FIELDS:
            raise _fail(path, f"resources.{k}", "unknown field" + _suggest(str(k), RESOURCE_FIELDS))
    cpus, gpus = res.get("cpus", 1), res.get("gpus", 0)
    if not _number(cpus) or cpus <= 0:
        raise _fail(path, "resources.cpus", f"expected a positive number of CPUs per trial, got {cpus!r}")
    if not _number(gpus) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise _fail(path, "resources.gpus", "expected 0, a fraction of one GPU (e.g. 0.25) or a whole number "
                                            f"of GPUs per trial, got {gpus!r}")
    mem = {}
    for k, what in (("gpu_memory", "GiB of memory of one GPU"), ("memory", "GiB of host memory per trial")):
        v = res.get(k, 0)
        if not _number(v) or v < 0:
            raise _fail(path, f"resources.{k}", f"expected a positive number ({what}), got {v!r}")
        mem[k] = float(v)
    pack = data.get("pack", 1)
    if pack != "auto" and (not _int(pack) or pack < 1):
        raise _fail(path, "pack", f"expected a number of trials per pack (1 = no packing) or auto, got {pack!r}")
    max_trials = data.get("max_trials", MAX_TRIALS)
    if not _int(max_trials) or max_trials < 1:
        raise _fail(path, "max_trials", f"expected a whole number >= 1, got {max_trials!r}")
    ints = {}
    for k in ("max_concurrent", "retries", "checkpoint_every"):
        v = data.get(k, DEFAULTS.get(k))
        if v is not None and (not _int(v) or v < 0):
            raise _fail(path, k, f"expected a whole number >= 0, got {v!r}")
        ints[k] = v
    if ints["checkpoint_every"] is not None and "checkpoint_every" not in base:
        base = {**base, "checkpoint_every": ints["checkpoint_every"]}

    results_root = _location(path, "results", results if results is not None else data.get("results", "results"))
    sweep_dir = join(results_root, name)
    uri = tracking_uri(path, mlflow if mlflow is not None else data.get("mlflow"), sweep_dir)
    store = storage if storage is not None else data.get("storage")
    store = join(sweep_dir, "tune") if store is None else _location(path, "storage", store)
    return Sweep(name=name, path=path, text=text, base=base, axes=axes, include=include, exclude=exclude,
                 cpus=float(cpus), gpus=float(gpus), max_concurrent=ints["max_concurrent"],
                 retries=ints["retries"], results=results_root, mlflow=uri, storage=store,
                 description=description, pack=pack, max_trials=max_trials, forced=forced, **mem)


# -- expansion ------------------------------------------------------------------------------------------
# A candidate trial: field -> value, and field -> where in the file the value came from (for errors).
Candidate = tuple[dict[str, Any], dict[str, str]]


def _same(name: str, a: Any, b: Any) -> bool:
    if isinstance(FIELDS[name].default, float) and _number(a) and _number(b):
        return float(a) == float(b)
    return a == b


def _matches(values: dict[str, Any], rule: dict[str, Any]) -> bool:
    """A trial matches when every field of the rule equals (or, for a list, is one of) its value; fields the
    trial does not set are compared with their default."""
    for name, want in rule.items():
        have = values.get(name, FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING else {})
        options = want if isinstance(want, list) else [want]
        if not any(_same(name, have, w) for w in options):
            return False
    return True


def _cross(rule: dict[str, Any], where: str) -> list[Candidate]:
    """A mapping whose list values are alternatives -> every combination, with provenance."""
    names = list(rule)
    options = [[(v, f"{where}.{n}[{i}]") for i, v in enumerate(rule[n])] if isinstance(rule[n], list)
               else [(rule[n], f"{where}.{n}")] for n in names]
    return [({n: v for n, (v, _) in zip(names, combo, strict=True)},
             {n: w for n, (_, w) in zip(names, combo, strict=True)}) for combo in itertools.product(*options)]


def _product(sweep: Sweep) -> list[Candidate]:
    out: list[Candidate] = [(dict(sweep.base), {k: f"base.{k}" for k in sweep.base})]
    for name, values in sweep.axes.items():
        nxt = []
        for vals, where in out:
            for i, v in enumerate(values):
                if name in FIELDS:
                    nxt.append(({**vals, name: v}, {**where, name: f"axes.{name}[{i}]"}))
                else:
                    nxt.append(({**vals, **v}, {**where, **{f: f"axes.{name}[{i}].{f}" for f in v}}))
        out = nxt
    return out


def upper_count(sweep: Sweep) -> int:
    """The most trials the file can make, from the sizes of its axes and include rules (before exclude and
    deduplication), without expanding anything."""
    def size(rule: dict[str, Any]) -> int:
        return math.prod(len(v) if isinstance(v, list) else 1 for v in rule.values())

    n = math.prod(len(v) for v in sweep.axes.values())
    for rule in sweep.include:
        n = n * size(rule["then"]) if "when" in rule else n + size(rule)
    return n


def expand(sweep: Sweep) -> list[Trial]:
    """Every trial of the sweep, in file order, validated and deduplicated by key."""
    most = upper_count(sweep)
    if most > sweep.max_trials:
        sizes = " x ".join(str(len(v)) for v in sweep.axes.values()) or "1"
        rules = ", with include rules" if sweep.include else ""
        raise _fail(sweep.path, "axes", f"{most} trials (axes {sizes}{rules}), more than max_trials "
                                        f"({sweep.max_trials}); set max_trials: {most} in the file to run them all")
    cands = _product(sweep)
    added = 0
    for i, rule in enumerate(sweep.include):
        if "when" in rule:
            nxt = []
            for vals, where in cands:
                if _matches(vals, rule["when"]):
                    nxt += [({**vals, **v}, {**where, **w}) for v, w in _cross(rule["then"], f"include[{i}].then")]
                else:
                    nxt.append((vals, where))
            added += len(nxt) - len(cands)
            cands = nxt
        else:
            extra = [({**sweep.base, **v}, {**{k: f"base.{k}" for k in sweep.base}, **w})
                     for v, w in _cross(rule, f"include[{i}]")]
            added += len(extra)
            cands += extra
    if sweep.forced:  # after include rules, so a forced seed or epochs holds for the trials they add too
        at = {k: f"--set {k}" if k in sweep.from_cli else f"set.{k}" for k in sweep.forced}
        cands = [({**v, **sweep.forced}, {**w, **at}) for v, w in cands]
    before = len(cands)
    cands = [(v, w) for v, w in cands if not any(_matches(v, rule) for rule in sweep.exclude)]
    excluded = before - len(cands)

    built: list[tuple[TrialConfig, Candidate]] = []
    for vals, where in cands:
        try:
            cfg = make_config(vals)
        except ConfigError as e:
            field_, _, what = str(e).partition(": ")
            loc = where.get(field_) or f"trial {_describe(vals, sweep)}: {field_}"
            raise _fail(sweep.path, loc, what) from None
        built.append((cfg, (vals, where)))
    seen: dict[str, tuple[TrialConfig, dict[str, Any], Candidate]] = {}
    for cfg, cand in built:
        d = cfg.to_dict()  # once per trial: the key, the varying fields and the names all read it
        seen.setdefault(config_key(d), (cfg, d, cand))
    duplicates = len(built) - len(seen)
    if not seen:
        raise _fail(sweep.path, "exclude", f"no trials left ({before} before exclude)")
    varying = _varying(sweep, [d for _, d, _ in seen.values()])
    trials = [_trial(k, c, d, cand, varying, sweep) for k, (c, d, cand) in seen.items()]
    names = collections.Counter(t.name for t in trials)
    if len(names) != len(trials):  # only in odd corner cases: keep names unique with the key
        trials = [dataclasses.replace(t, name=f"{t.name},key={t.key[:8]}") if names[t.name] > 1 else t
                  for t in trials]
    sweep.stats = {"combinations": before, "included": added, "excluded": excluded, "duplicates": duplicates,
                   "trials": len(trials)}
    return trials


def _describe(vals: dict[str, Any], sweep: Sweep) -> str:
    axis_fields = [f for f in _field_order(sweep) if f in vals]
    return ",".join(f"{f}={_fmt(vals[f])}" for f in axis_fields) or "base"


def _field_order(sweep: Sweep) -> list[str]:
    """Fields in the order the sweep introduces them: base, axes (group fields inline), include rules."""
    order: list[str] = list(sweep.base)
    for name, values in sweep.axes.items():
        order += [name] if name in FIELDS else [f for v in values for f in v]
    for rule in sweep.include:
        order += list(rule["then"] if "when" in rule else rule)
    return list(dict.fromkeys(order))


def _varying(sweep: Sweep, configs: list[dict[str, Any]]) -> list[str]:
    """The fields whose value differs between trials (configs: their to_dict()): they make up trial names."""
    order = _field_order(sweep)
    order += [f for f in FIELDS if f not in order]
    first = configs[0]
    same = set(order)  # fields equal in every config so far
    for d in configs[1:]:
        same -= {f for f in same if d[f] != first[f]}
    return [f for f in order if f not in same]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _shown(skip: set[str], cand: Candidate, varying: list[str]) -> list[str]:
    """The fields a trial's name shows: those the sweep file sets for this trial (base, axes, include),
    among those that vary across the sweep and matter for it (`skip`: irrelevant(cfg); endpoints of a line
    drop out)."""
    _, where = cand
    return [f for f in varying if f in where and f not in skip]


def word(name: str, value: Any) -> str:
    """One field in words: a string is its value (`line`), a flag its name or `no <name>`, a number
    `name=value`."""
    if isinstance(value, bool):
        return name if value else f"no {name}"
    if isinstance(value, str):
        return value
    return f"{name}={_fmt(value)}"


def _trial(key: str, cfg: TrialConfig, d: dict[str, Any], cand: Candidate, varying: list[str],
           sweep: Sweep) -> Trial:
    """A Trial (d: cfg.to_dict()) with its name (`shape=line,layerwise=true,seed=1`) and words: the sweep's
    axes in the file's order (a group axis as its entry's fields), then the fields that vary through include
    rules."""
    skip = irrelevant(cfg)
    shown = _shown(skip, cand, varying)
    _, where = cand
    words: list[tuple[str, str]] = []   # (field, the field in words)
    axes = []
    covered: set[str] = set()
    for axis, entries in sweep.axes.items():
        if axis in FIELDS:
            covered.add(axis)
            words += [(axis, word(axis, d[axis]))] if axis in shown else []
            continue
        index = {int(m.group(1)) for w in where.values() if (m := re.match(rf"axes\.{re.escape(axis)}\[(\d+)]", w))}
        if len(index) == 1:
            entry = [f for f in entries[index.pop()] if f not in skip]
            covered.update(entry)
            words += [(f, word(f, d[f])) for f in entry]
            axes.append((axis, " ".join(word(f, d[f]) for f in entry) or "-"))
    words += [(f, word(f, d[f])) for f in shown if f not in covered]
    title = " ".join(w for _, w in words) or "trial"
    group = " ".join(w for f, w in words if f not in REPLICATE) or "all"
    name = ",".join(f"{f}={_fmt(d[f])}" for f in shown) or "trial"
    return Trial(key=key, name=name, config=cfg, title=title, group=group, axes=tuple(axes))


# -- basin validate ---------------------------------------------------------------------------------------
def describe(sweep: Sweep, show: int = 5) -> str:
    """What `basin validate` and `basin run --dry-run` print: the trial count and the first trials."""
    s = sweep.stats
    axes = " x ".join(f"{k}({len(v)})" for k, v in sweep.axes.items()) or "none"
    notes = [f"{s[k]} {label}" for k, label in (("included", "added by include"), ("excluded", "dropped by exclude"),
                                                ("duplicates", "duplicates (same effective config)")) if s.get(k)]
    lines = [f"{sweep.path}: ok: sweep {sweep.name!r}, {s['trials']} trials"
             + (f" ({'; '.join(notes)})" if notes else ""),
             f"  axes: {axes}",
             f"  per {'trial' if sweep.pack == 1 else f'pack (pack: {sweep.pack})'}: {sweep.cpus:g} CPU, "
             f"{sweep.gpus:g} GPU; at once: {sweep.max_concurrent or 'as many as fit'}; retries: {sweep.retries}",
             f"  results: {sweep.dir}",
             f"  mlflow:  {sweep.mlflow or 'off'}",
             f"  tune:    {sweep.storage}"]
    trials = sweep.trials
    lines.append(f"  first {min(show, len(trials))} of {len(trials)} trials:")
    lines += [f"    {i + 1:>3}. {t.name}  [{t.key}]" for i, t in enumerate(trials[:show])]
    return "\n".join(lines)


def add_set_arg(p: Any) -> None:
    """--set FIELD=VALUE, repeatable: a trial field forced on every trial (validate, run, submit, train)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="force a trial field on every trial, e.g. --set epochs=2 --set seed=0 for a smoke test "
                        "(part of the trial keys, as any field)")


def add_validate_args(p: Any) -> None:
    p.add_argument("sweep", help="the sweep file (YAML)")
    add_set_arg(p)
    p.add_argument("--show", type=int, default=5, metavar="N", help="print the first N trials (default 5)")
    p.add_argument("--results", help="results folder or URI (overrides the file's `results`)")
    p.add_argument("--cluster", action="store_true",
                   help="the sweep runs on a cluster: skip the checks of this machine (resources, data on disk)")


def cmd_validate(args: Any) -> int:
    sweep = load_sweep(args.sweep, results=args.results, overrides=args.overrides)
    if not args.cluster:
        from orchestrator.preflight import check

        check(sweep)
    from orchestrator.packing import pack_size

    pack_size(sweep)  # a packing, or a share of a GPU, that cannot fit: refused as `basin run` would
    try:
        print(describe(sweep, args.show), flush=True)
    except BrokenPipeError:  # `basin validate X | head -1`: the reader has all it wants; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail
    return 0
