"""`basin` command line. Each command lives in the module named here, which defines
`add_<command>_args(parser)` and `cmd_<command>(args) -> int`; modules load only when their command runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("orchestrator.local", "run one trial from a config file (no Ray, no MLflow)"),
    "validate": ("orchestrator.sweep", "check a sweep file and print its trial count and first trials"),
    "run": ("orchestrator.runner", "run a sweep on local Ray or a cluster (--address)"),
    "status": ("orchestrator.status", "list sweeps under a results folder, or follow a submitted job"),
    "ui": ("orchestrator.ui", "open the MLflow UI on a sweep's runs (127.0.0.1)"),
    "compact": ("orchestrator.status", "merge a results folder's Parquet files into few large ones"),
    "analyze": ("orchestrator.analyze", "write a report folder (figures, tables, index.html) from results"),
    "claims": ("orchestrator.analyze", "judge the seed papers' claims on results: holds, not shown, reversed"),
    "check-cluster": ("orchestrator.cluster", "check a Ray cluster file and its nodes before `ray up`"),
    "submit": ("orchestrator.submit", "submit a sweep to a Ray cluster as a Ray job"),
    "logs": ("orchestrator.submit", "follow the logs of a submitted sweep job"),
    "sync-mlflow": ("orchestrator.sync", "rebuild or complete a sweep's MLflow runs from its Parquet results"),
}


class UserError(Exception):
    """An error in the user's input: printed as one line, exit status 2, no traceback."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # MLflow prints two lines ("View run … at", "View experiment at") for every run it ends on a tracking
    # server: 2,000 lines of a 1,000-trial job log. basin prints where the runs are once, at the end.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    parser = argparse.ArgumentParser(prog="basin", description="Sweeps for loss-landscape studies.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:  # only the command being run pays for its imports
            getattr(importlib.import_module(module), f"add_{name.replace('-', '_')}_args")(p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        command = getattr(importlib.import_module(COMMANDS[args.command][0]), f"cmd_{args.command.replace('-', '_')}")
        return int(command(args) or 0)
    except UserError as e:
        print(f"basin {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # --strict and an unreadable results file (trainers.folder): its one line
        folder = sys.modules.get("trainers.folder")
        if folder is None or not isinstance(e, folder.UnreadableFile):
            raise
        print(f"basin {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # `python -m orchestrator.cli`: run the importable module so UserError is one class
    from orchestrator.cli import main as _main

    sys.exit(_main())
