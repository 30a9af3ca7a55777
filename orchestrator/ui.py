"""What the MLflow UI opens with for a sweep, and `basin ui` (MLflow's UI on a sweep's store, 127.0.0.1 only).

MLflow 3.17 has no server-side default for the runs table, but saved views: an experiment tag
`mlflow.sharedViewState.<key>` holding a name and the table's state (columns, their order and widths,
grouping, sort), listed in the runs page's Views menu and applied when the URL says
`?viewStateShareKey=<key>`. Each sweep's experiment gets such views (see `experiment_tags`), and `basin ui`
prints the URL that opens the default one in the UI's machine-learning view (`workflowType=machine_learning`;
without it MLflow 3 opens in its GenAI mode):

    http://127.0.0.1:5000/#/experiments/<id>/runs?viewStateShareKey=basin&workflowType=machine_learning

    basin           the seed groups' runs (tag basin.role = group, see orchestrator/sync.py heal_groups): one row
                    per group with its axes and the mean and ± std of the headline metrics, best first
    basin-by-<axis> the trials' runs, one row per value of one axis (MLflow's averages over those trials)
    basin-runs      every trial's run, not grouped
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
import webbrowser
import zlib
from typing import Any
from urllib.parse import quote

from orchestrator import tracking as T
from orchestrator.cli import UserError
from orchestrator.sweep import Sweep, is_uri
from trainers.config import FIELDS

VIEW = "basin"
VIEW_TAG = "mlflow.sharedViewState."
MAX_TAG = 20_000  # characters in an experiment tag's value (mlflow.utils.validation)
KIND_TAG, ML_KIND = "mlflow.experimentKind", "custom_model_development"  # the experiment's kind: not GenAI
GROUP_TAG = "basin.group"      # a child run's seed group (its trial title without the seed), see sweep.Trial
# Headline columns shown by default (the Brier scores are logged too: Columns menu).
COLUMNS = [m for m in T.headline_names() if not m.endswith("brier")]
SORT_BY = f"{T.MAIN}accuracy"  # the seed groups' view: best mean first
GROUPS_FILTER = f"tags.`{T.ROLE_TAG}` = '{T.GROUP_ROLE}'"
TRIALS_FILTER = f"tags.`{T.ROLE_TAG}` = '{T.TRIAL_ROLE}'"
CHART_RUNS = 50  # the chart view draws every group up to this many groups, else the first 20 of the table


def column(kind: str, name: str) -> str:
    """A runs-table column id as the UI names it: params.`shape`, metrics.`main/test_accuracy`."""
    return f"{kind}.`{name}`"


def axis_columns(sweep: Sweep) -> list[tuple[str, str]]:
    """(mode, name) of the columns that hold the sweep's axes, in the file's order: a field axis is a param,
    a group axis a tag of its own (its entry in words); fields that only include rules set follow."""
    out = [("param" if a in FIELDS else "tag", a) for a in sweep.axes]
    covered = {f for a in sweep.axes if a not in FIELDS for entry in sweep.axes[a] for f in entry} | set(sweep.axes)
    included = [f for rule in sweep.include for f in (rule["then"] if "when" in rule else rule)]
    return out + [("param", f) for f in dict.fromkeys(included) if f not in covered]


def view_state(sweep: Sweep, group_by: tuple[str, str] | None, groups: bool = False) -> dict[str, Any]:
    """The state of one view (see the module docstring): the runs table's filter, columns, grouping and sort.
    `groups`: the seed groups' runs, sorted by the main metric, each headline metric with its ± std column."""
    def width(chars: int) -> int:  # pixels for a column of this many characters at the table's font
        return min(380, 36 + int(6.5 * chars))

    axes = []
    if groups:
        longest = max(len(t.group) for t in sweep.trials)
    else:
        longest = max(max(len(t.title), len(t.group) + 12) for t in sweep.trials)  # a run, or "Group: ..." and a count
    widths = {column("attributes", "Run Name"): width(longest + 4),
              "runDateAndNestInfo": 140, "duration": 80}
    for mode, name in axis_columns(sweep):
        if groups and name == "seed":
            continue
        axes.append(column("params" if mode == "param" else "tags", name))
        widths[axes[-1]] = width(max(len(name), *map(len, group_values(sweep, (mode, name)))))
    names = [n for m in COLUMNS for n in ((m, T.std_name(m)) if groups else (m,))]
    names += [T.n_name(COLUMNS[0])] if groups else []
    metrics = [column("metrics", m) for m in names]
    widths.update({c: width(len(m)) for c, m in zip(metrics, names, strict=True)})
    state: dict[str, Any] = {
        "selectedColumns": axes + metrics,
        "columnOrder": [column("attributes", "Run Name"), "runDateAndNestInfo", "duration", *axes, *metrics],
        "columnWidths": widths,
        "orderByKey": "attributes.start_time", "orderByAsc": True,
        "searchFilter": TRIALS_FILTER,
    }
    if groups:
        state.update(searchFilter=GROUPS_FILTER, orderByKey=column("metrics", SORT_BY), orderByAsc=False,
                     runsHiddenMode="SHOW_ALL" if len({t.group for t in sweep.trials}) <= CHART_RUNS
                     else "FIRST_20_RUNS", **group_charts())
    if group_by is not None:  # groups start collapsed: one row per group with its averages, a click opens one
        mode, name = group_by
        state["groupBy"] = {"aggregateFunction": "average", "groupByKeys": [{"mode": mode, "groupByData": name}]}
        state["groupsExpanded"] = {f"{mode}.{name}.{value}": False for value in group_values(sweep, group_by)}
    return state


def group_charts() -> dict[str, Any]:
    """The chart view of the seed groups' table (MLflow 3.17's chart cards, as its UI generates them): the means
    first (section `main`, accuracy, NLL, ECE, Brier, then the ensemble's), each a bar chart with a bar per
    group; the std and n sections follow, folded. Metrics not named here are added by the UI after them."""
    names = [f"{prefix}{m}" for prefix in (T.MAIN, T.MAIN_ENSEMBLE) for m in T.HEADLINE]
    sections = [("main", True, names), ("main_std", False, [T.std_name(n) for n in names]),
                ("main_n", False, [T.n_name(n) for n in names])]
    return {
        "compareRunSections": [{"uuid": f"basin-{name}", "name": name, "display": shown, "isReordered": True,
                                "deleted": False, "isGenerated": True} for name, shown, _ in sections],
        "compareRunCharts": [{"uuid": f"basin-{key}", "type": "BAR", "runsCountToCompare": 10,
                              "metricSectionId": f"basin-{name}", "deleted": False, "isGenerated": True,
                              "metricKey": key, "displayName": key}
                             for name, _, keys in sections for key in keys],
        "isAccordionReordered": True,
    }


def view_tag(title: str, state: dict[str, Any], when: int) -> str:
    """A view as the UI saves one (3.17): an envelope with a name, shown in the runs page's Views menu (newest
    first: `when`, ms), and the state deflated. A view too long for a tag (20,000 characters) drops its
    collapsed-groups list (and then its column widths)."""
    for drop in ((), ("groupsExpanded",), ("groupsExpanded", "columnWidths")):
        packed = zlib.compress(json.dumps({k: v for k, v in state.items() if k not in drop}).encode())
        value = json.dumps({"name": title, "createdAt": when, "updatedAt": when,
                            "state": "deflate;" + base64.b64encode(packed).decode()})
        if len(value) <= MAX_TAG:
            break
    return value


def group_values(sweep: Sweep, group_by: tuple[str, str]) -> list[str]:
    """The values the runs show for a grouping (params as the mirror logs them, tags as set)."""
    mode, name = group_by
    if name == GROUP_TAG:
        values = [t.group for t in sweep.trials]
    elif mode == "tag":
        values = [dict(t.axes).get(name, "") for t in sweep.trials]
    else:
        values = [T.param(getattr(t.config, name)) for t in sweep.trials]
    return list(dict.fromkeys(values))


def views(sweep: Sweep) -> dict[str, tuple[str, tuple[str, str] | None]]:
    """Share key -> (title, grouping) of every view a sweep's experiment gets; the first (VIEW) is the seed
    groups' table (view_state(groups=True))."""
    out: dict[str, tuple[str, tuple[str, str] | None]] = {VIEW: ("basin: seed groups (mean ± std)", None)}
    out.update({f"{VIEW}-by-{name}": (f"basin: trials by {name}", (mode, name))
                for mode, name in axis_columns(sweep) if name != "seed"})
    out[f"{VIEW}-runs"] = ("basin: every trial", None)
    return out


def runs_path(experiment_id: str, view: str = VIEW) -> str:
    """The UI's route (after the host) to an experiment's runs table in a view, in the machine-learning view."""
    return f"/#/experiments/{experiment_id}/runs?viewStateShareKey={quote(view)}&workflowType=machine_learning"


def experiment_tags(sweep: Sweep) -> dict[str, str]:
    """Tags set on a sweep's experiment at every run: its kind, its views and a description linking them."""
    tags = {KIND_TAG: ML_KIND}
    now = int(time.time() * 1000)
    tags.update({VIEW_TAG + key: view_tag(title, view_state(sweep, group, groups=key == VIEW), now - i)
                 for i, (key, (title, group)) in enumerate(views(sweep).items())})  # the default one on top
    links = ", ".join(f"[{title.removeprefix('basin: ')}]({runs_path(T.EXPERIMENT_ID, key)[1:]})"
                      for key, (title, _) in views(sweep).items())
    parent = f"[{sweep.name}](#/experiments/{T.EXPERIMENT_ID}/runs/{T.PARENT_RUN_ID})"
    tags["mlflow.note.content"] = (f"{sweep.description}\n\n" if sweep.description else "") + \
        f"basin sweep `{sweep.name}`, {len(sweep.trials)} trials. Its seed groups (one run each: mean ± std over " \
        f"seeds of the headline metrics) and trials (also in the Views menu): {links}. The sweep's own run " \
        f"{parent} holds its file and its report (report.html)."
    return tags


# -- basin ui ---------------------------------------------------------------------------------------------
def add_ui_args(p: Any) -> None:
    p.add_argument("sweep", help="a sweep's results folder, e.g. results/quickstart")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--group-by", metavar="AXIS", help="open the runs grouped by this axis ('runs': not grouped; "
                                                      "default: the seed groups, mean ± std)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    p.add_argument("--tracking-uri", metavar="URL",
                   help="a sweep on a tracking server: the server as reached from here, e.g. "
                        "http://127.0.0.1:5000 through the SSH tunnel (default: the sweep's own `mlflow`)")


def tracking_uri(folder: str) -> tuple[str, str]:
    """(the sweep's name, its MLflow tracking URI); UserError when it has none."""
    name, uri, _ = _saved(folder)
    return name, uri


def _saved(folder: str, override: str | None = None) -> tuple[str, str, Sweep | None]:
    """(name, tracking URI, the saved sweep) of a results folder; `override` is the URI to use instead of the
    one the sweep recorded (a cluster's server through a tunnel), so that one is not checked."""
    from orchestrator.status import saved_sweep

    sweep = saved_sweep(folder)
    name = sweep.name if sweep else folder.rstrip("/").rpartition("/")[2]
    if override:
        return name, override, sweep
    uri = sweep.mlflow if sweep else ""
    if not uri and not is_uri(folder) and os.path.exists(os.path.join(folder, "mlflow.db")):
        uri = f"sqlite:///{os.path.abspath(os.path.join(folder, 'mlflow.db'))}"
    if not uri:
        raise UserError(f"{folder}: no MLflow store for this sweep (was it run with mlflow: false?)")
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise UserError(f"{folder}: the sweep's MLflow store {uri} does not exist yet")
    return name, uri, sweep


def refresh_views(uri: str, sweep: Sweep) -> None:
    """Set the experiment's kind, views and description from the sweep file saved with the results (a sweep
    run by an older basin, or whose last run had nothing to do, gets them too). Best effort."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(sweep.name)
        parents = [] if exp is None else client.search_runs(
            [exp.experiment_id], f"tags.`{T.ROLE_TAG}` = '{T.SWEEP_ROLE}'", max_results=1,
            order_by=["attributes.start_time ASC"])
        for k, v in experiment_tags(sweep).items() if parents else ():
            client.set_experiment_tag(exp.experiment_id, k, T.fill_ids(v, exp.experiment_id, parents[0].info.run_id))
    except Exception as e:  # the UI works without them
        print(f"basin ui: could not set the sweep's views ({type(e).__name__}: {e})", file=sys.stderr)


def sweep_url(base: str, uri: str, name: str, group_by: str | None) -> str:
    """The URL of the sweep's runs table in its view (the UI's home page if the experiment is not there)."""
    from mlflow.tracking import MlflowClient

    if group_by in (None, "seed"):
        view = VIEW
    elif group_by == "runs":
        view = f"{VIEW}-runs"
    else:
        view = f"{VIEW}-by-{group_by}"
    try:
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except Exception:  # a server that is not up: the URL without the experiment
        exp = None
    if exp is None:
        return f"{base}/#/?workflowType=machine_learning"
    if VIEW_TAG + view in exp.tags:
        return base + runs_path(exp.experiment_id, view)
    if group_by not in (None, "seed", "runs"):
        by = f"{VIEW_TAG}{VIEW}-by-"
        known = sorted(k.removeprefix(by) for k in exp.tags if k.startswith(by))
        raise UserError(f"--group-by {group_by}: not an axis of sweep {name!r} (axes: {', '.join(known) or 'none'})")
    return f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"  # made before views


def _open(url: str) -> None:
    """A browser only where one can show up: a desktop session (never a terminal browser on a server)."""
    if sys.platform == "darwin" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        webbrowser.open(url)


def cmd_ui(args: Any) -> int:
    folder = args.sweep.rstrip("/")
    name, uri, sweep = _saved(folder, args.tracking_uri)
    T.quiet_http_defaults()  # a server out of reach fails in seconds, not after MLflow's retries
    if sweep is not None:
        refresh_views(uri, sweep)
    if uri.startswith(("http://", "https://")):
        print(f"{args.sweep} logs to the tracking server {uri} (on a cluster, reach it through the SSH tunnel "
              f"and give --tracking-uri http://127.0.0.1:5000); the sweep's runs:\n"
              f"{sweep_url(uri.rstrip('/'), uri, name, args.group_by)}")
        return 0
    base = f"http://127.0.0.1:{args.port}"
    url = sweep_url(base, uri, name, args.group_by)  # checks --group-by before the server starts
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port), "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # no background job runners
    proc = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        if proc.poll() is None:
            print(f"MLflow UI for {args.sweep}: {url}  (Ctrl-C to stop)", flush=True)
            if not args.no_browser:
                _open(url)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
        return 0
