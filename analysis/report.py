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
import functools
import html
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from analysis import calibration, diversity, ensembles, landscape, plots, probes, tables
from analysis.load import Results, filesystem, load
from analysis.predictions import load_core
from analysis.tables import Table
from analysis.trials import caption, select, with_groups

SWEEP_TAG = ("basin.role", "sweep")  # the orchestrator's parent run of a sweep carries this tag


@dataclass
class Item:
    """One figure or table of the report; `skipped` says why it is absent."""

    kind: str                      # "figure" | "table"
    name: str
    title: str
    caption: str = ""
    files: list[Path] = field(default_factory=list)
    skipped: str = ""
    note: str = ""
    table: Table | None = None


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


def _used(trials: pd.DataFrame, keys: Any = None, groups: Any = None) -> pd.DataFrame:
    """The trials a figure summarises: given trial keys and/or whole groups."""
    sel = pd.Series(False, index=trials.index)
    if keys is not None:
        sel |= trials["trial_key"].isin(set(keys))
    if groups is not None:
        sel |= trials["group"].isin(set(groups))
    return trials[sel]


class _Builder:
    """Builds one sweep's items; every analysis reads the predictions loaded once here."""

    def __init__(self, view: Any, folder: Path, hue: str | None, bins: int, n_subsets: int, max_points: int,
                 seed: int):
        self.view, self.folder, self.hue, self.bins = view, folder, hue, bins
        self.n_subsets, self.max_points, self.seed = n_subsets, max_points, seed
        self.trials = with_groups(view.trials)
        self.probs = load_core(view)
        self.items: list[Item] = []

    def figure(self, name: str, title: str, cap: str, make: Callable[[], Any], note: str = "") -> None:
        fig = make()
        files = plots.save(fig, self.folder / "figures" / name)
        self.items.append(Item("figure", name, title, cap, [f.relative_to(self.folder) for f in files], note=note))

    def table(self, t: Table, note: str = "") -> None:
        d = self.folder / "tables"
        d.mkdir(parents=True, exist_ok=True)
        t.data.to_csv(d / f"{t.name}.csv", index=False)
        (d / f"{t.name}.md").write_text(t.markdown() + "\n")
        self.items.append(Item("table", t.name, t.title, t.caption,
                               [Path("tables") / f"{t.name}.csv", Path("tables") / f"{t.name}.md"],
                               note=note, table=t))

    def skip(self, kind: str, name: str, title: str, why: str) -> None:
        self.items.append(Item(kind, name, title, skipped=why))

    # -- the analyses ---------------------------------------------------------------------------------
    def ensemble_curves(self) -> None:
        title = "Ensemble size: accuracy, NLL, ECE, Brier against k"
        values = ensembles.ensemble_values(self.view, n_subsets=self.n_subsets, max_points=self.max_points,
                                           bins=self.bins, seed=self.seed, probs=self.probs)
        if values.empty:
            why = "no group with 2+ seeds and no trial with 2+ samples, endpoints or checkpoints"
            self.skip("figure", "ensemble_curves", title, why)
            self.skip("table", "ensemble_curves", title, why)
            return
        curves = ensembles.ensemble_curves(self.view, values=values)
        missing = [s for s in ensembles.SOURCES if s not in set(values["source"])]
        note = f"not available in this sweep: {', '.join(missing)}" if missing else ""
        cap = caption(_used(self.trials, values["trial_key"], values.loc[values["source"] == "seeds", "group"]))
        self.figure("ensemble_curves", title, cap, lambda: plots.ensemble_curves(curves, cap, self.hue), note)
        means = [c for c in curves if c.endswith("_mean")]
        cells = curves.assign(**{c: [tables.fmt_mean_std(m, s, c.removesuffix("_mean")) for m, s in
                                     zip(curves[c], curves[c.replace("_mean", "_std")], strict=True)]
                                 for c in means})
        cells = cells.set_index(["source", "group_label", "k"])[[c for c in curves if c.endswith("_mean")]]
        cells.columns = [tables.unit(c.removesuffix("_mean")) for c in cells.columns]
        self.table(Table("ensemble_curves", title, cap + " · mean ± std over random subsets (seeds) or seeds",
                         curves.drop(columns=["group"]), [tables.View("", cells)]), note)

    def robustness(self) -> None:
        t = tables.robustness_table(self.view)
        if t.empty:
            self.skip("table", "robustness", "Robustness", "no test evaluations")
        else:
            self.table(t)

    def calibration(self) -> None:
        t = calibration.calibration_table(self.view)
        if t.empty:
            self.skip("table", "calibration", "Calibration", "no clean test evaluations")
        else:
            self.table(t)
        title = "Reliability diagrams"
        rel = calibration.reliability_curves(self.view, self.bins, probs=self.probs)
        if rel.empty:
            self.skip("figure", "reliability", title, "no saved test predictions (save_predictions)")
            return
        cap = caption(_used(self.trials, groups=rel["group"]))
        self.figure("reliability", title, cap, lambda: plots.reliability(rel, cap))
        self.table(tables.simple_table("reliability", title, cap, rel.drop(columns=["group"]),
                                       rel.set_index(["group_label", "bin"])[["count", "confidence", "accuracy"]]
                                       .round(4)))

    def landscape(self) -> None:
        title = "Accuracy and loss along α (lines and curves) and the barrier between independent models"
        a = landscape.alpha_curves(self.view)
        if a.empty:
            self.skip("figure", "landscape_alpha", title, "no line or curve trials with α-grid evaluations")
        else:
            cap = caption(_used(self.trials, groups=a["group"]))
            note = "" if (a["role"] == "independent").any() else \
                "barrier line absent: no independently trained pair of standard models in this sweep"
            self.figure("landscape_alpha", title, cap, lambda: plots.alpha_curves(a, cap), note)
            cells = a.pivot_table(index=["role", "group_label"], columns="alpha", values="accuracy_mean")
            cells.columns = [f"α={c:g}" for c in cells.columns]
            self.table(tables.simple_table("landscape_alpha", "Test accuracy (%) along α", cap,
                                           a.drop(columns=["group"]), (100 * cells).round(2)), note)
        title = "Simplex (m = 3) heat map"
        s = landscape.simplex_grid(self.view)
        if s.empty:
            self.skip("figure", "landscape_simplex", title, "no simplex trials with 3 endpoints")
            return
        cap = caption(_used(self.trials, groups=s["group"]))
        self.figure("landscape_simplex", title, cap, lambda: plots.simplex(s, cap))
        self.table(tables.simple_table("landscape_simplex", "Test accuracy over the m = 3 simplex", cap,
                                       s.drop(columns=["group"]),
                                       s.set_index(["group_label", "c0", "c1", "c2"])[["accuracy_mean", "n"]]
                                       .round(4)))

    def diversity(self) -> None:
        title = "Cosine similarity of weights across checkpoints and seeds"
        w = diversity.weight_similarity(self.view)
        if w.empty:
            self.skip("figure", "weights_cosine", title, "no weights recorded (set weight_projection > 0)")
        else:
            cap = caption(_used(self.trials, w.index.get_level_values("trial_key")))
            self.figure("weights_cosine", title, cap,
                        lambda: plots.matrix(w, title, cap, "cosine similarity", "viridis", None, 1.0))
        title = "Prediction disagreement across checkpoints and seeds"
        d = diversity.prediction_disagreement(self.view, probs=self.probs)
        if d.empty:
            self.skip("figure", "prediction_disagreement", title,
                      "no per-epoch predictions (set epoch_predictions: true)")
        else:
            cap = caption(_used(self.trials, d.index.get_level_values("trial_key")))
            self.figure("prediction_disagreement", title, cap,
                        lambda: plots.matrix(d, title, cap, "fraction of test labels that differ", "magma", 0.0))
        title = "t-SNE of prediction trajectories"
        t = diversity.tsne_trajectories(self.view, probs=self.probs, seed=self.seed)
        if t.empty:
            self.skip("figure", "tsne_trajectories", title,
                      "fewer than 3 checkpoints with predictions (set epoch_predictions: true)")
        else:
            cap = caption(_used(self.trials, t["trial_key"]))
            self.figure("tsne_trajectories", title, cap, lambda: plots.tsne(t, cap))
        title = "Accuracy against diversity"
        a = diversity.accuracy_vs_diversity(self.view, probs=self.probs)
        if a.empty:
            self.skip("figure", "accuracy_vs_diversity", title,
                      "no trial with a second function to compare (seeds, samples, endpoints or checkpoints)")
            return
        cap = caption(_used(self.trials, a["trial_key"]))
        self.figure("accuracy_vs_diversity", title, cap, lambda: plots.accuracy_vs_diversity(a, cap))
        summary = a.groupby(["group_label", "source"]).agg(
            pairs=("accuracy", "size"), accuracy=("accuracy", "mean"), disagreement=("disagreement", "mean"),
            diversity=("diversity", "mean")).round(4)
        self.table(tables.simple_table("accuracy_vs_diversity", title, cap + " · means over pairs", a, summary))


def build_report(results: str | Results, out: str | Path, hue: str | None = None, bins: int | None = None,
                 n_subsets: int = 10, max_points: int = 12, seed: int = 0,
                 sweeps: list[str] | None = None) -> list[SweepReport]:
    """Write the report folder and return what it holds. `bins` defaults to the trials' `ece_bins`."""
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
            builder = _Builder(view, rep.folder, hue, b, n_subsets, max_points, seed)
            for step in (builder.ensemble_curves, builder.robustness, builder.calibration, builder.landscape,
                         builder.diversity, functools.partial(probes.section, builder)):  # analysis/probes.py
                step()
            rep.items = builder.items
            write_html(rep.folder / "index.html", [rep], prefix="")
            reports.append(rep)
    write_html(out / "index.html", reports, prefix=None)
    return reports


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd} table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#f4f4f4}
.cap{color:#555;font-size:13px} .skip{color:#a60} section{margin-bottom:2em}"""


def write_html(path: Path, reports: list[SweepReport], prefix: str | None) -> None:
    """index.html listing every figure (PNG inline, SVG linked) and table (inline, CSV/Markdown linked);
    prefix None: links go through each sweep's folder (the top-level index)."""
    e = html.escape
    body = [f"<h1>basin report</h1><p class=cap>{e(time.strftime('%Y-%m-%d %H:%M'))} · "
            f"{len(reports)} sweep(s)</p>"]
    if not reports:
        body.append("<p class=skip>No trials found.</p>")
    for rep in reports:
        pre = f"{rep.folder.name}/" if prefix is None else prefix
        body.append(f"<section><h2>sweep {e(rep.sweep or '(unnamed)')}</h2><p class=cap>{e(rep.summary)} · "
                    f"from {e(rep.source)}</p>")
        for it in rep.items:
            if it.skipped:
                body.append(f"<h3>{e(it.title)}</h3><p class=skip>{e(it.kind)} {e(it.name)} skipped: "
                            f"{e(it.skipped)}</p>")
                continue
            body.append(f"<h3>{e(it.kind.capitalize())}: {e(it.title)}</h3><p class=cap>{e(it.caption)}</p>")
            if it.note:
                body.append(f"<p class=skip>{e(it.note)}</p>")
            links = " · ".join(f"<a href='{e(pre + str(f))}'>{e(f.suffix[1:])}</a>" for f in it.files)
            if it.kind == "figure":
                png = next(f for f in it.files if f.suffix == ".png")
                body.append(f"<p><img src='{e(pre + str(png))}' alt='{e(it.name)}'></p><p class=cap>{links}</p>")
            else:
                body.append((it.table.html() if it.table else "") + f"<p class=cap>{links}</p>")
        body.append("</section>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>basin report</title>"
                    f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


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
