"""`basin analyze RESULTS --out DIR [--mlflow]`: the report (analysis.build_report) of one or more sweeps, and
optionally each sweep's report folder logged as artifacts (under `report/`) of the sweep's parent MLflow run.
`basin run` does the same at the end of a run by default (runner.attach_report).

The parent run is found in the sweep's MLflow store (the `mlflow` URI of the sweep file saved in its folder,
else sqlite:///<sweep folder>/mlflow.db, else $MLFLOW_TRACKING_URI) as the run tagged basin.role=sweep in
the experiment named after the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.cli import UserError
from orchestrator.store import Store
from orchestrator.tracking import ROLE_TAG, SWEEP_ROLE


def default_tracking_uri(source: str) -> str | None:
    """The sweep's own store: the `mlflow` URI of the sweep file saved in its folder, else
    sqlite:///<sweep folder>/mlflow.db when it exists, else $MLFLOW_TRACKING_URI."""
    if "://" not in source:
        saved = Store(source).read_bytes("sweep.yaml")
        if saved is not None:
            import yaml

            try:
                uri = (yaml.safe_load(saved) or {}).get("mlflow")
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
    """The id of the sweep's parent run: the first one tagged basin.role=sweep in the experiment named after
    the sweep (the one the orchestrator keeps reusing when a sweep is run again)."""
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{SWEEP_ROLE}'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def parent_run(sweep: str, source: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(tracking URI, parent run id) of a sweep read from `source`; UserError when there is none."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri(source)
    if not uri:
        raise UserError(f"sweep {sweep!r}: no MLflow store found (no {source}/mlflow.db); give --tracking-uri")
    run_id = sweep_run(MlflowClient(tracking_uri=uri), sweep)
    if run_id is None:
        raise UserError(f"sweep {sweep!r}: no parent run tagged {ROLE_TAG}={SWEEP_ROLE} in "
                        f"experiment {sweep!r} at {uri}")
    return uri, run_id


EMBEDDED = "report.html"  # the report as one file, beside the folder report/ on the sweep's run
_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def embedded_html(folder: str | Path) -> str:
    """A sweep's report page (<folder>/index.html) as one self-contained file: every image it shows embedded
    as a data URI, so that it renders whole where relative links do not resolve (MLflow's artifact viewer).
    Links to the full-size PNG of a figure are dropped (the image is the figure); links to CSV, Markdown and
    SVG files stay, relative to the report folder."""
    import base64
    import html
    import re

    folder = Path(folder)
    page = (folder / "index.html").read_text()

    def inline(m: re.Match) -> str:
        path = folder / html.unescape(m.group(2))
        mime = _MIME.get(path.suffix.lower())
        if mime is None or not path.is_file() or not path.resolve().is_relative_to(folder.resolve()):
            return m.group(0)
        return f"src={m.group(1)}data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}{m.group(1)}"

    page = re.sub(r"""src=(['"])(?!data:|https?:|/)([^'"]+)\1""", inline, page)
    return re.sub(r"""<a href=(['"])[^'"]+\.png\1""", "<a", page)


def log_report(folder: str | Path, uri: str, run_id: str) -> None:
    """A sweep's report folder as artifacts (under report/) of its parent run, the same page as one
    self-contained file (report.html, embedded_html) beside it, and its claims scorecard as a table on the run
    (log_claims)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.log_artifacts(run_id, str(folder), artifact_path="report")
    if (Path(folder) / "index.html").exists():
        client.log_text(run_id, embedded_html(folder), EMBEDDED)
    log_claims(client, folder, run_id)


CLAIMS_TAG = "basin.claims"


def log_claims(client: Any, folder: str | Path, run_id: str) -> bool:
    """The report's claims scorecard (tables/claims.csv, analysis/claims.py) on the run: `claims.json` in the
    format mlflow.log_table writes (orient "split", listed in the mlflow.loggedArtifacts tag, so the UI shows
    it as a table), replaced rather than appended to when the report is logged again; and the tag
    basin.claims with the count of each verdict. False when the report has no scorecard."""
    import pandas as pd
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    from analysis.claims import counts

    csv = Path(folder) / "tables" / "claims.csv"
    if not csv.exists():
        return False
    card = pd.read_csv(csv)
    for c in card.columns:  # an empty CSV cell is "" in a text column (why, over), not NaN
        if not pd.api.types.is_numeric_dtype(card[c]):
            card[c] = card[c].fillna("")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "claims.json"
        card.to_json(path, orient="split", index=False)
        client.log_artifact(run_id, str(path))
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": "claims.json", "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))
    client.set_tag(run_id, CLAIMS_TAG, counts(card))
    return True


def sweeps_in(results: str, only: list[str] | None) -> list[tuple[str, str]]:
    """(results folder, sweep) for every sweep under RESULTS (restricted to `only`)."""
    from analysis.load import load
    from analysis.report import results_folders

    out = []
    for folder in results_folders(results):
        trials = load(folder).trials
        out += [(folder, s) for s in sorted(trials["sweep"].unique()) if len(trials) and (not only or s in only)]
    return out


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
    p.add_argument("--strict", action="store_true", help="refuse, writing nothing, when a results file cannot be "
                   "read (default: name it in one line and leave it out)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from analysis.report import build_report, results_folders

    if args.bins is not None and args.bins < 1:
        raise UserError(f"--bins: expected at least 1, got {args.bins}")
    if args.subsets < 1:
        raise UserError(f"--subsets: expected at least 1, got {args.subsets}")
    if not results_folders(args.results):
        raise UserError(f"{args.results}: no results found (expected {args.results}/trials/*.parquet "
                        f"or {args.results}/<sweep>/trials/*.parquet)")
    if args.strict:  # refuse before writing anything
        from trainers.folder import Folder
        from trainers.schema import TABLES

        for folder in results_folders(args.results):
            for table in TABLES:
                Folder(folder, strict=True).verify(table)
    runs = {}
    if args.mlflow:  # fail before the work, not after it
        runs = {sweep: parent_run(sweep, folder, args.tracking_uri) for folder, sweep in
                sweeps_in(args.results, args.sweep)}
    t0 = time.time()
    reports = build_report(args.results, args.out, hue=args.hue, bins=args.bins, n_subsets=args.subsets,
                           seed=args.seed, sweeps=args.sweep, strict=args.strict)
    if args.sweep and not reports:
        raise UserError(f"--sweep: none of {', '.join(args.sweep)} found under {args.results}")
    for rep in reports:
        done = [i for i in rep.items if not i.skipped]
        skipped = [i for i in rep.items if i.skipped]
        print(f"{rep.sweep}: {sum(i.kind == 'figure' for i in done)} figures, "
              f"{sum(i.kind == 'table' for i in done)} tables -> {rep.folder}"
              + (f" ({len(skipped)} skipped: {', '.join(i.name for i in skipped)})" if skipped else ""))
        if rep.sweep in runs:
            uri, run_id = runs[rep.sweep]
            log_report(rep.folder, uri, run_id)
            print(f"{rep.sweep}: logged to MLflow run {run_id} (artifacts report.html, report/, table claims.json)")
    print(f"report: {Path(args.out) / 'index.html'} ({time.time() - t0:.1f} s)")
    return 0


# -- basin claims -------------------------------------------------------------------------------------------
def add_claims_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="RESULTS",
                   help="a results folder (RESULTS/trials/...) or a folder of sweep folders; local or s3://")
    p.add_argument("--json", action="store_true", help="print the scorecard as JSON (one object per row)")
    p.add_argument("--by", action="append", default=[], metavar="AXIS",
                   help="one verdict per value of this axis instead of pooling over it (repeatable)")
    p.add_argument("--sweep", action="append", default=None, help="only this sweep (repeatable)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the t interval (default 0.95)")


def cmd_claims(args: argparse.Namespace) -> int:
    """The seed papers' claims judged on RESULTS (analysis/claims.py): a plain table, or JSON."""
    import pandas as pd

    from analysis.claims import format_text, scorecard
    from analysis.load import load
    from analysis.report import results_folders

    if not 0 < args.level < 1:
        raise UserError(f"--level: expected a probability between 0 and 1, got {args.level}")
    folders = results_folders(args.results)
    if not folders:
        raise UserError(f"{args.results}: not a results folder (expected {args.results}/trials/*.parquet "
                        f"or {args.results}/<sweep>/trials/*.parquet)")
    cards = [scorecard(load(f), by=args.by, level=args.level, sweeps=args.sweep) for f in folders]
    card = pd.concat(cards, ignore_index=True) if cards else pd.DataFrame()
    if args.sweep and card.empty:
        raise UserError(f"--sweep: none of {', '.join(args.sweep)} found under {args.results}")
    text = json.dumps(json.loads(card.to_json(orient="records")), indent=1, ensure_ascii=False) if args.json \
        else format_text(card, args.level)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `basin claims X | head`: the reader has what it wants; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail
    return 0
