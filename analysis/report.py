"""A report folder from a results folder's Parquet tables (`basin analyze`, orchestrator/analyze.py).

    DIR/index.html                         every sweep's figures and tables (and what was skipped, and why)
    DIR/<sweep>/index.html                 the same for one sweep (self-contained: what MLflow gets)
    DIR/<sweep>/figures/<name>.png|.svg
    DIR/<sweep>/tables/<name>.csv|.md      CSV: tidy numbers; Markdown: the formatted table

RESULTS is one results folder (RESULTS/trials/...) or a folder of sweep folders (RESULTS/<sweep>/trials/...).
A results folder may hold several sweeps (the `sweep` column): each gets its own section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from analysis.load import Results, load
from analysis.page import write_html
from analysis.sections import SECTIONS, Context, Item, Section
from analysis.trials import caption, select, untrained
from trainers.folder import filesystem
from trainers.schema import FINAL_STATUSES

__all__ = ["SECTIONS", "Item", "Section", "SweepReport", "build_report", "results_folders", "write_html"]


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
                 sections: list[Section] | None = None, check_layout: bool = False,
                 strict: bool = False) -> list[SweepReport]:
    """Write the report folder and return what it holds. `bins` defaults to the trials' `ece_bins`;
    `sections` to analysis.sections.SECTIONS; check_layout records plots.layout_problems on each figure;
    strict: refuse an unreadable results file (analysis.load) instead of leaving it out."""
    out = Path(out)
    sources = [results] if isinstance(results, Results) else \
        [load(f, strict=strict) for f in results_folders(str(results))]
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
            failed = int((~all_trials["status"].isin(FINAL_STATUSES)).sum())
            n_div = int((all_trials["status"] == "diverged").sum())
            n_chance = int(untrained(all_trials).sum())
            rep.summary = caption(view.trials) + (f" · {failed} failed trial(s) not shown" if failed else "") \
                + (f" · {n_div} diverged trial(s) excluded from every mean (listed under Diverged or untrained "
                   "trials)" if n_div else "") \
                + (f" · {n_chance} trial(s) finished at chance, kept in the means (listed under Diverged or "
                   "untrained trials)" if n_chance else "")
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
            if res.skipped:
                rep.summary += f" · {len(res.skipped)} unreadable file(s) left out: {', '.join(res.folder.skipped)}"
            write_html(rep.folder / "index.html", [rep], prefix="")
            reports.append(rep)
    write_html(out / "index.html", reports, prefix=None)
    return reports

