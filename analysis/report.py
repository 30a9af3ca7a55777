"""`basin analyze RESULTS --out DIR [--mlflow]`: a report folder from a results folder's Parquet tables.

    DIR/index.html                         every sweep's figures and tables (and what was skipped, and why)
    DIR/<sweep>/index.html                 the same for one sweep (self-contained: logged to MLflow)
    DIR/<sweep>/figures/<name>.png|.svg
    DIR/<sweep>/tables/<name>.csv|.md      CSV: tidy numbers; Markdown: the formatted table

RESULTS is one results folder (RESULTS/trials/...) or a folder of sweep folders (RESULTS/<sweep>/trials/...).
A results folder may hold several sweeps (the `sweep` column): each gets its own section. With --mlflow,
each sweep's folder is logged as artifacts (under `report/`) of the sweep's parent run, found in the
sweep's MLflow store (default sqlite:///<sweep folder>/mlflow.db) as the run tagged basin.role=sweep in the
experiment named after the sweep.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from analysis.load import Results, filesystem, load
from analysis.page import write_html
from analysis.sections import SECTIONS, Context, Item, Section
from analysis.trials import caption, select

__all__ = ["SECTIONS", "Item", "Section", "SweepReport", "build_report", "results_folders", "write_html"]
SWEEP_TAG = ("basin.role", "sweep")  # the orchestrator's parent run of a sweep carries this tag


@dataclass
class SweepReport:
    sweep: str
    folder: Path                   # DIR/<sweep>
    source: str                    # the results folder it was read from
    summary: str = ""
    items: list[Item] = field(default_factory=list)

    def get(self, name: str, kind: str | None = None) -> Item:
        for it in self.items:
            if it.name == name and (kind is None or it.kind == kind):
                return it
        raise KeyError(name)


def results_folders(root: str) -> list[str]:
    """RESULTS itself when it holds tables, else its sub-folders that do (one per sweep)."""
    fs, path = filesystem(str(root))
    base = path.rstrip("/")
    if fs.get_file_info(f"{base}/trials").type == pafs.FileType.Directory:
        return [str(root)]
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    out = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(base)), key=lambda i: i.path):
        if info.type == pafs.FileType.Directory and \
                fs.get_file_info(f"{info.path}/trials").type == pafs.FileType.Directory:
            out.append(f"{str(root).rstrip('/')}/{info.base_name}")
    return out


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "sweep"


def build_report(results: str | Results, out: str | Path, hue: str | None = None, bins: int | None = None,
                 n_subsets: int = 10, max_points: int = 12, seed: int = 0, sweeps: list[str] | None = None,
                 sections: list[Section] | None = None, check_layout: bool = False) -> list[SweepReport]:
    """Write the report folder and return what it holds. `bins` defaults to the trials' `ece_bins`;
    `sections` to analysis.sections.SECTIONS; check_layout records plots.layout_problems on each figure."""
    out = Path(out)
    sources = [results] if isinstance(results, Results) else [load(f) for f in results_folders(str(results))]
    reports: list[SweepReport] = []
    used_names: set[str] = set()
    for res in sources:
        trials = res.trials
        for sweep in sorted(trials["sweep"].unique()) if len(trials) else []:
            if sweeps and sweep not in sweeps:
                continue
            view = select(res, sweep)
            name = slug(sweep)
            while name in used_names:
                name += "_"
            used_names.add(name)
            rep = SweepReport(sweep, out / name, res.root)
            all_trials = trials[trials["sweep"] == sweep]
            failed = int((all_trials["status"] != "completed").sum())
            rep.summary = caption(view.trials) + (f" · {failed} failed trial(s) not shown" if failed else "")
            if view.trials.empty:
                rep.items.append(Item("table", "all", "Everything", skipped="no completed trials"))
                reports.append(rep)
                continue
            b = bins or (int(view.trials["ece_bins"].mode().iloc[0]) if "ece_bins" in view.trials else 15)
            ctx = Context(view, rep.folder, b, n_subsets, max_points, seed, hue, check_layout)
            for section in SECTIONS if sections is None else sections:
                ctx.section = section.id
                section.build(ctx)
            rep.items = ctx.items
            write_html(rep.folder / "index.html", [rep], prefix="")
            reports.append(rep)
    write_html(out / "index.html", reports, prefix=None)
    return reports


# -- MLflow -----------------------------------------------------------------------------------------------
def default_tracking_uri(source: str) -> str | None:
    """The sweep's own store: the `mlflow` URI of the sweep file saved in its folder, else
    sqlite:///<sweep folder>/mlflow.db when it exists, else $MLFLOW_TRACKING_URI."""
    if "://" not in source:
        saved = Path(source, "sweep.yaml")
        if saved.exists():
            import yaml

            try:
                uri = (yaml.safe_load(saved.read_text()) or {}).get("mlflow")
            except (yaml.YAMLError, AttributeError):
                uri = None
            # a server or an absolute SQLite path; a relative one was relative to where the sweep ran
            relative = isinstance(uri, str) and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////")
            if isinstance(uri, str) and uri and not relative:
                return uri
        db = Path(source, "mlflow.db").absolute()
        if db.exists():
            return f"sqlite:///{db}"
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def sweep_run(client: Any, sweep: str) -> str | None:
    """The id of the sweep's parent run (tag basin.role=sweep in the experiment named after the sweep); the
    first one, which is the one the orchestrator keeps reusing when a sweep is run again."""
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SWEEP_TAG[0]}` = '{SWEEP_TAG[1]}'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def parent_run(sweep: str, source: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(tracking URI, parent run id) of a sweep read from `source`; UserError when there is none."""
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import UserError

    uri = tracking_uri or default_tracking_uri(source)
    if not uri:
        raise UserError(f"sweep {sweep!r}: no MLflow store found (no {source}/mlflow.db); give --tracking-uri")
    run_id = sweep_run(MlflowClient(tracking_uri=uri), sweep)
    if run_id is None:
        raise UserError(f"sweep {sweep!r}: no parent run tagged {SWEEP_TAG[0]}={SWEEP_TAG[1]} in "
                        f"experiment {sweep!r} at {uri}")
    return uri, run_id


def log_to_mlflow(rep: SweepReport, tracking_uri: str | None = None) -> str:
    """Log the sweep's report folder as artifacts (under report/) of its parent run; returns the run id."""
    from mlflow.tracking import MlflowClient

    uri, run_id = parent_run(rep.sweep, rep.source, tracking_uri)
    MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(rep.folder), artifact_path="report")
    return run_id


# -- command line -----------------------------------------------------------------------------------------
def add_analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="RESULTS",
                   help="a results folder (RESULTS/trials/...) or a folder of sweep folders; local or s3://")
    p.add_argument("--out", default="report", help="report folder to write (default: ./report)")
    p.add_argument("--sweep", action="append", default=None, help="only this sweep (repeatable)")
    p.add_argument("--mlflow", action="store_true", help="also log each sweep's report to its parent MLflow run")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store for --mlflow (default: <sweep folder>/mlflow.db, else $MLFLOW_TRACKING_URI)")
    p.add_argument("--hue", default=None, help="config axis that colours the ensemble curves (e.g. label_noise)")
    p.add_argument("--bins", type=int, default=None, help="confidence bins for ECE/reliability (default: ece_bins)")
    p.add_argument("--subsets", type=int, default=10, help="random seed subsets per ensemble size (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed for subsets and t-SNE (default 0)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from orchestrator.cli import UserError

    if args.bins is not None and args.bins < 1:
        raise UserError(f"--bins: expected at least 1, got {args.bins}")
    if args.subsets < 1:
        raise UserError(f"--subsets: expected at least 1, got {args.subsets}")
    if not results_folders(args.results):
        raise UserError(f"{args.results}: no results found (expected {args.results}/trials/*.parquet "
                        f"or {args.results}/<sweep>/trials/*.parquet)")
    if args.mlflow:  # fail before the work, not after it
        for folder in results_folders(args.results):
            trials = load(folder).trials
            for sweep in sorted(trials["sweep"].unique()) if len(trials) else []:
                if not args.sweep or sweep in args.sweep:
                    parent_run(sweep, folder, args.tracking_uri)
    t0 = time.time()
    reports = build_report(args.results, args.out, hue=args.hue, bins=args.bins, n_subsets=args.subsets,
                           seed=args.seed, sweeps=args.sweep)
    if args.sweep and not reports:
        raise UserError(f"--sweep: none of {', '.join(args.sweep)} found under {args.results}")
    for rep in reports:
        done = [i for i in rep.items if not i.skipped]
        skipped = [i for i in rep.items if i.skipped]
        print(f"{rep.sweep}: {sum(i.kind == 'figure' for i in done)} figures, "
              f"{sum(i.kind == 'table' for i in done)} tables -> {rep.folder}"
              + (f" ({len(skipped)} skipped: {', '.join(i.name for i in skipped)})" if skipped else ""))
        if args.mlflow:
            run_id = log_to_mlflow(rep, args.tracking_uri)
            print(f"{rep.sweep}: logged to MLflow run {run_id} (artifacts report/)")
    print(f"report: {Path(args.out) / 'index.html'} ({time.time() - t0:.1f} s)")
    return 0
