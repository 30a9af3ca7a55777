"""The MLflow UI as a user sees it: a sweep with every method (subspace point and line, independent, swa,
mimo) run by `basin run` on a real local Ray, then `basin ui` (`mlflow ui` on 127.0.0.1, in its own process
group) read through MLflow's REST API the way the UI reads it: the experiment and its views, a search with
the view's filter, a filter by a param, the runs grouped by an axis, metric histories, the parent run and
its artifacts. Every run must show the sweep's axes and the same headline metrics."""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import urllib.parse
import urllib.request
import zlib
from typing import Any

import pytest
from conftest import ROOT, TINY, assert_mirror_matches_parquet, end_group, free_port, read_line, write_sweep

from analysis.load import load
from orchestrator.runner import run_sweep
from orchestrator.sweep import load_sweep
from orchestrator.tracking import headline_metrics

pytestmark = pytest.mark.timeout(600)
KINDS = {"point": {"shape": "point"}, "line": {"shape": "line"},
         "independent": {"method": "independent", "shape": "line"},
         "swa": {"method": "swa", "shape": "point"}, "mimo": {"method": "mimo", "shape": "point"}}


@pytest.fixture(scope="module")
def ui(ray_local, tmp_path_factory):
    """The sweep, run once with its report, and `basin ui` serving it: (sweep, base URL, printed URL)."""
    tmp = tmp_path_factory.mktemp("ui")
    entries = "\n".join(f"    - {json.dumps(v)}" for v in KINDS.values())
    path = write_sweep(tmp, f"""
name: every_method
description: Every method on digits, two seeds.
base: {json.dumps({**TINY, "ensemble_samples": 2})}
axes:
  kind:
{entries}
  seed: [0, 1]
results: {tmp / "results"}
""")
    sweep = load_sweep(path)
    summary = run_sweep(sweep, every=1)
    assert summary.ok and summary.report and summary.report_mlflow, summary
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", sweep.dir, "--port", str(port),
                             "--no-browser"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        line, _ = read_line(proc, "MLflow UI for", 120)
        yield sweep, f"http://127.0.0.1:{port}", line.split()[4]
    finally:
        end_group(proc)


def rest(base: str, endpoint: str, body: dict[str, Any] | None = None, **query: Any) -> dict[str, Any]:
    """One call to MLflow's REST API under /ajax-api, as the UI makes it."""
    url = f"{base}/ajax-api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def experiment(base: str, name: str) -> tuple[str, dict[str, str]]:
    exp = rest(base, "experiments/get-by-name", experiment_name=name)["experiment"]
    return exp["experiment_id"], {t["key"]: t["value"] for t in exp["tags"]}


def saved_view(tag: str) -> tuple[str, dict[str, Any]]:
    """A saved view as the UI reads one: an envelope with a name and the state, deflated and base64-encoded."""
    envelope = json.loads(tag)
    assert envelope["state"].startswith("deflate;")
    return envelope["name"], json.loads(zlib.decompress(base64.b64decode(envelope["state"][8:])))


def search(base: str, experiment_id: str, filter_: str) -> list[dict[str, Any]]:
    runs = rest(base, "runs/search", {"experiment_ids": [experiment_id], "filter": filter_, "max_results": 1000,
                                      "order_by": ["attributes.start_time ASC"]}).get("runs", [])
    return [{"name": r["info"]["run_name"], "id": r["info"]["run_id"],
             "params": {p["key"]: p["value"] for p in r["data"].get("params", [])},
             "tags": {t["key"]: t["value"] for t in r["data"].get("tags", [])},
             "metrics": {m["key"]: m["value"] for m in r["data"].get("metrics", [])}} for r in runs]


def test_the_runs_table_shows_axes_and_headline_metrics_for_every_method(ui):
    sweep, base, url = ui
    eid, tags = experiment(base, sweep.name)
    # `basin ui` printed the URL of the runs table in the machine-learning view, in basin's view
    assert url == f"{base}/#/experiments/{eid}/runs?viewStateShareKey=basin&workflowType=machine_learning"
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    name, view = saved_view(tags["mlflow.sharedViewState.basin"])
    assert name == "basin: seed groups (mean ± std)"  # listed under this name in the runs page's Views menu
    headline = ["main/test_accuracy", "main/test_nll", "main/test_ece"]
    # the seed groups' runs, best first: the axes but the seed, then each headline metric and its ± std
    assert view["searchFilter"] == "tags.`basin.role` = 'group'" and "groupBy" not in view
    assert view["orderByKey"] == "metrics.`main/test_accuracy`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:1] == ["tags.`kind`"]  # no Dataset/Source
    assert view["selectedColumns"][1:7] == [f"metrics.`{p}/{m[5:]}`" for m in headline for p in ("main", "main_std")]
    assert view["columnOrder"][3:] == view["selectedColumns"]

    everything = search(base, eid, "")  # every run: the sweep's own run, its seed groups and its trials
    runs = [r for r in everything if r["tags"]["basin.role"] == "trial"]
    groups = search(base, eid, view["searchFilter"])  # what the default view loads
    assert len(everything) == len(runs) + len(groups) + 1 and len(groups) == 5
    for g in groups:  # mean, std and n over the group's seeds
        acc = [r["metrics"]["main/test_accuracy"] for r in runs if r["tags"]["basin.group"] == g["name"]]
        assert g["metrics"]["main/test_accuracy"] == pytest.approx(statistics.fmean(acc), rel=1e-4)
        assert g["metrics"]["main_std/test_accuracy"] == pytest.approx(statistics.stdev(acc), rel=1e-4)
        assert g["metrics"]["main_n/test_accuracy"] == 2
        assert g["tags"]["kind"] in {r["tags"]["kind"] for r in runs if r["tags"]["basin.group"] == g["name"]}
    trials = load(sweep.dir).trials.set_index("trial_key")
    assert len(runs) == len(sweep.trials) == 10
    evals = load(sweep.dir).evals
    for run in runs:
        t = trials.loc[run["tags"]["basin.trial_key"]]
        # every column of the view has a value in every run (the ensemble ones where the trial has one)
        assert run["tags"]["kind"] and run["params"]["seed"] == str(t.seed)
        expected = headline_metrics(evals[evals.trial_key == t.name].to_dict("records"), t.main_point,
                                    t.main_ensemble)
        assert set(headline) <= set(expected), run["name"]
        assert {k: run["metrics"][k] for k in expected} == expected
        if run["tags"]["kind"] in ("line", "independent line", "mimo point"):  # trials with an ensemble
            assert "main/ensemble_test_accuracy" in run["metrics"], run["name"]
        if run["tags"]["kind"] == "point":
            assert not any(k.startswith("main/ensemble") for k in run["metrics"])
    # readable names, wide enough a column for the longest
    names = [r["name"] for r in runs]
    assert sorted(names) == sorted(t.title for t in sweep.trials) and "independent line seed=1" in names
    assert view["columnWidths"]["attributes.`Run Name`"] >= 6.5 * max(map(len, names))


def test_filter_by_a_param_and_group_by_an_axis(ui):
    sweep, base, _ = ui
    eid, tags = experiment(base, sweep.name)
    swa = search(base, eid, "params.method = 'swa'")
    assert sorted(r["name"] for r in swa) == ["swa point seed=0", "swa point seed=1"]
    # grouped by the `kind` axis (the UI groups the search results by the tag): one group per method, each
    # with both seeds and the headline metrics that the group row averages
    groups: dict[str, list] = {}
    for run in search(base, eid, "tags.`basin.role` = 'trial'"):
        groups.setdefault(run["tags"]["kind"], []).append(run)
    assert sorted(groups) == ["independent line", "line", "mimo point", "point", "swa point"]
    for runs in groups.values():
        assert len(runs) == 2 and all("main/test_accuracy" in r["metrics"] for r in runs)
    _, by_kind = saved_view(tags["mlflow.sharedViewState.basin-by-kind"])  # `basin ui --group-by kind`
    assert by_kind["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "kind"}]
    assert by_kind["searchFilter"] == "tags.`basin.role` = 'trial'"  # trials only: no group run averaged in


def test_profiles_are_curves_and_the_parent_run_has_summary_and_report(ui):
    sweep, base, _ = ui
    assert_mirror_matches_parquet(sweep.mlflow, sweep)  # times, curves, profiles, headline, detail
    eid, _ = experiment(base, sweep.name)
    line = next(r for r in search(base, eid, "params.shape = 'line' and params.method = 'subspace'"))
    hist = rest(base, "metrics/get-history", run_id=line["id"], metric_key="landscape/alpha_index/test_accuracy")
    assert [m["step"] for m in hist["metrics"]] == list(range(TINY["alpha_grid"]))

    (parent,) = search(base, eid, "tags.`basin.role` = 'sweep'")
    assert parent["tags"]["mlflow.note.content"].startswith("Every method on digits, two seeds.")
    assert parent["params"]["axis.seed"] == "[0, 1]" and parent["params"]["trials"] == "10"
    assert not any(k.startswith("group/") for k in parent["metrics"])  # the groups are runs of their own
    assert parent["metrics"]["sweep/groups"] == 5 and parent["metrics"]["sweep/completed"] == 10
    files = rest(base, "artifacts/list", run_id=parent["id"], path="report")["files"]
    assert {"report/index.html", "report/figures", "report/tables"} <= {f["path"] for f in files}
    # the report as one file, its figures embedded: what MLflow's artifact viewer renders whole
    assert "report.html" in {f["path"] for f in rest(base, "artifacts/list", run_id=parent["id"])["files"]}
    with urllib.request.urlopen(f"{base}/get-artifact?path=report.html&run_uuid={parent['id']}", timeout=30) as r:
        page = r.read().decode()
    assert "src='data:image/png;base64," in page and "src='figures/" not in page


def test_a_view_too_large_for_a_tag_drops_its_collapsed_groups():
    import uuid

    from orchestrator.ui import MAX_TAG, view_tag

    small = {"selectedColumns": ["params.`seed`"], "groupsExpanded": {"tag.basin.group.a": False}}
    assert saved_view(view_tag("v", small, 1)) == ("v", small)
    large = {**small, "groupsExpanded": {f"tag.basin.group.{uuid.uuid4().hex}": False for _ in range(3000)}}
    tag = view_tag("v", large, 1)
    assert len(tag) <= MAX_TAG and saved_view(tag) == ("v", {"selectedColumns": ["params.`seed`"]})
