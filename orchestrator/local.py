"""`basin train CONFIG.yaml`: one trial, in this process, results in a folder. No Ray, no MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from orchestrator.cli import UserError
from orchestrator.sweep import add_set_arg, parse_overrides
from trainers.config import ConfigError, TrialConfig, make_config


def read_config(path: str, overrides: list[str] = ()) -> TrialConfig:
    """A trial config from a YAML mapping of trial fields, with `field=value` overrides (YAML values)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of trial fields")
    values.update(parse_overrides(overrides))
    try:
        return make_config(values)
    except ConfigError as e:
        raise UserError(f"{path}: {e}") from None


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML file of trial fields (see trainers/config.py)")
    p.add_argument("--out", default=None, help="results folder (default: results/train-<trial key>)")
    add_set_arg(p)
    p.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint, if any")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def cmd_train(args: argparse.Namespace) -> int:
    from trainers.data import DataError
    from trainers.references import EndpointError
    from trainers.results import FolderSink, load_state
    from trainers.train import run_trial

    if args.out and "://" in args.out:
        raise UserError(f"--out {args.out}: expected a local folder (sweeps write to URIs: basin run)")
    cfg = read_config(args.config, args.overrides)
    out = Path(args.out or f"results/train-{cfg.key()}")
    sink = FolderSink(out, sweep="train", trial_key=cfg.key(), name=Path(args.config).stem, verbose=not args.quiet)
    resume = load_state(sink.checkpoint_path) if args.resume and sink.checkpoint_path.exists() else None
    try:
        tables = run_trial(cfg, sink, resume)
    except (DataError, EndpointError) as e:  # EndpointError: a connect trial's endpoints are not in --out
        raise UserError(str(e)) from None
    print_summary(tables["evals"])
    print(f"results: {out}/  (analysis.load({str(out)!r}).evals)")
    return 0


def print_summary(evals: list[dict]) -> None:
    """A short table: the named points and ensembles on the test split (not the whole alpha grid)."""
    named = ("endpoint", "center", "ensemble", "colour", "gap")
    rows = [e for e in evals if e["split"] == "test" and e["kind"] in named]
    print(f"{'point':<22}{'acc':>8}{'nll':>8}{'ece':>8}{'brier':>8}")
    for e in rows:
        print(f"{e['point']:<22}{e['accuracy']:>8.4f}{e['nll']:>8.4f}{e['ece']:>8.4f}{e['brier']:>8.4f}")
