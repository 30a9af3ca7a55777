"""The sweep file: expansion, names, keys, defaults, and one clear line per mistake (no Ray needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, write_sweep

from orchestrator.cli import UserError, main
from orchestrator.sweep import Trial, load_sweep


def sweep_of(tmp_path: Path, text: str):
    return load_sweep(write_sweep(tmp_path, text), results=str(tmp_path / "results"))


def test_quickstart_is_the_documented_study():
    sweep = load_sweep(ROOT / "sweeps" / "quickstart.yaml")
    trials = sweep.trials
    assert len(trials) == 60
    assert len({t.key for t in trials}) == 60 and len({t.name for t in trials}) == 60
    kinds = Counter((t.config.method, t.config.shape, t.config.layerwise, t.config.endpoints) for t in trials)
    assert kinds == {("subspace", "point", False, 1): 12, ("subspace", "line", False, 2): 12,
                     ("subspace", "line", True, 2): 12, ("subspace", "simplex", False, 3): 12,
                     ("independent", "line", False, 2): 12}
    assert all(t.config.epoch_predictions and t.config.weight_projection for t in trials)  # diversity plots
    assert {t.config.label_noise for t in trials} == {0.0, 0.2}
    assert {t.config.batchnorm for t in trials} == {True, False}
    assert {t.config.seed for t in trials} == {0, 1, 2}
    assert all(t.config.dataset == "digits" for t in trials)
    assert trials[0].name == "shape=point,batchnorm=true,label_noise=0,seed=0"
    assert "shape=simplex,endpoints=3,batchnorm=false,label_noise=0.2,seed=2" in {t.name for t in trials}
    assert sweep.mlflow == f"sqlite:///{Path('results').absolute()}/quickstart/mlflow.db"


def test_expansion_order_names_and_keys(tmp_path):
    sweep = sweep_of(tmp_path, """
        name: s
        base: {epochs: 3}
        axes:
          shape: [point, line]
          seed: [0, 1, 2]
        """)
    names = [t.name for t in sweep.trials]
    assert names == [f"shape={s},seed={i}" for s in ("point", "line") for i in range(3)]  # first axis outermost
    assert all(t.config.epochs == 3 for t in sweep.trials)
    assert sweep.trials[0].key == sweep.trials[0].config.key()
    again = sweep_of(tmp_path, (tmp_path / "sweep.yaml").read_text())
    assert [t.key for t in again.trials] == [t.key for t in sweep.trials]  # keys are stable
    assert Trial(key="0123456789abcdef", name="a=1/b", config=sweep.trials[0].config).dirname == "a=1_b-01234567"


def test_fields_irrelevant_to_a_shape_do_not_make_new_trials(tmp_path):
    sweep = sweep_of(tmp_path, """
        name: s
        axes:
          shape: [point, line, simplex]
          endpoints: [2, 3, 4]
          layerwise: [false, true]
        """)
    got = Counter((t.config.shape, t.config.endpoints, t.config.layerwise) for t in sweep.trials)
    # point: one (one weight vector); line: endpoints irrelevant; simplex: all of them
    assert got == {("point", 1, False): 1, ("line", 2, False): 1, ("line", 2, True): 1,
                   **{("simplex", m, lw): 1 for m in (2, 3, 4) for lw in (False, True)}}
    assert sweep.stats["duplicates"] == 18 - 9
    assert "endpoints" not in next(t.name for t in sweep.trials if t.config.shape == "line")


def test_include_and_exclude(tmp_path):
    sweep = sweep_of(tmp_path, """
        name: s
        axes:
          shape: [point, line, simplex]
          batchnorm: [true, false]
        include:
          - when: {shape: simplex}
            then: {endpoints: [3, 4]}
          - {shape: curve, seed: [7, 8]}
        exclude:
          - {shape: line, batchnorm: false}
          - {endpoints: 4, batchnorm: [false]}
        """)
    got = sorted((t.config.shape, t.config.batchnorm, t.config.endpoints if t.config.shape == "simplex" else 0,
                  t.config.seed) for t in sweep.trials)
    assert got == sorted([("point", True, 0, 0), ("point", False, 0, 0), ("line", True, 0, 0),
                          ("simplex", True, 3, 0), ("simplex", False, 3, 0), ("simplex", True, 4, 0),
                          ("curve", True, 0, 7), ("curve", True, 0, 8)])
    assert sweep.stats["excluded"] == 2


def test_group_axis_and_defaults(tmp_path):
    sweep = sweep_of(tmp_path, """
        name: grp
        axes:
          kind:
            - {shape: point}
            - {shape: line, layerwise: true}
        checkpoint_every: 3
        resources: {cpus: 0.5, gpus: 0.25}
        """)
    assert [t.name for t in sweep.trials] == ["shape=point", "shape=line,layerwise=true"]
    assert all(t.config.checkpoint_every == 3 for t in sweep.trials)
    assert (sweep.cpus, sweep.gpus, sweep.retries, sweep.max_concurrent) == (0.5, 0.25, 2, 0)
    results = tmp_path / "results"
    assert sweep.dir == f"{results}/grp"
    assert sweep.mlflow == f"sqlite:///{results}/grp/mlflow.db"
    assert sweep.storage == f"{results}/grp/tune"


def test_validate_prints_count_and_first_trials(tmp_path, capsys):
    path = write_sweep(tmp_path, """
        name: v
        axes: {seed: [0, 1, 2, 3, 4, 5, 6]}
        """)
    assert main(["validate", str(path), "--show", "2", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "7 trials" in out and "seed=0" in out and "seed=1" in out and "seed=2" not in out
    assert not (tmp_path / "r").exists()


# One line per mistake, naming the file and the field; `basin run` starts nothing.
BAD = {
    "yaml": ("name: x\naxes: {seed: [0, 1}\n", "line 2: not valid YAML"),
    "top_list": ("- name: x\n", "expected a mapping"),
    "unknown_top": ("name: x\naxis: {seed: [0]}\n", "axis: unknown field (did you mean 'axes'?)"),
    "duplicate_key": ("name: x\nname: y\n", "duplicate key 'name'"),
    "bad_name": ("name: my sweep\n", "name: expected a name"),
    "unknown_trial_field": ("name: x\nbase: {lrr: 0.1}\n", "base.lrr: unknown trial field (did you mean 'lr'?)"),
    "wrong_type": ("name: x\nbase: {epochs: ten}\n", "base.epochs: expected int, got 'ten'"),
    "bad_choice": ("name: x\naxes: {shape: [point, line, cube]}\n", "axes.shape[2]: expected one of point, line"),
    "axis_not_list": ("name: x\naxes: {seed: 3}\n", "axes.seed: expected a non-empty list of values, got 3"),
    "impossible": ("name: x\naxes: {label_noise: [0.0, 1.5]}\n", "axes.label_noise[1]: expected a rate in [0, 1)"),
    "cross_field": ("name: x\nbase: {epochs: 2, warmup_epochs: 5}\n", "base.warmup_epochs: expected between 0 and"),
    "gpus": ("name: x\nresources: {cpus: 1, gpus: 1.5}\n", "resources.gpus: expected 0, a fraction"),
    "resource_typo": ("name: x\nresources: {cpu: 1}\n", "resources.cpu: unknown field (did you mean 'cpus'?)"),
    "retries": ("name: x\nretries: two\n", "retries: expected a whole number >= 0, got 'two'"),
    "mlflow_scheme": ("name: x\nmlflow: ftp://host/x\n", "mlflow: expected a tracking URI with scheme"),
    "results_scheme": ("name: x\nresults: ftp://host/x\n", "results: expected a local folder or a URI"),
    "exclude_all": ("name: x\naxes: {seed: [0, 1]}\nexclude: [{seed: [0, 1]}]\n", "exclude: no trials left"),
    "include_half": ("name: x\ninclude: [{when: {shape: line}}]\n", "include[0]: a conditional rule has exactly"),
    "group_typo": ("name: x\naxes: {sede: [1, 2]}\n", "axes.sede: unknown trial field (did you mean 'seed'?)"),
    "not_writable": ("name: x\nresults: /proc/basin-cannot-write\n", "results: cannot write to /proc/"),
}


def run_args(case: str, path: Path, results: Path) -> list[str]:
    """`basin run` for a bad file; cases about the results location keep the file's own."""
    return ["run", str(path)] + ([] if case in ("not_writable", "results_scheme") else ["--results", str(results)])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_gives_one_line(case, tmp_path, capsys):
    text, expected = BAD[case]
    path = write_sweep(tmp_path, text, f"{case}.yaml")
    assert main(run_args(case, path, tmp_path / "results")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"basin run: error: {path}: "), err
    assert expected in err, err
    assert not (tmp_path / "results").exists()


def test_resume_needs_an_earlier_run(tmp_path, capsys):
    path = write_sweep(tmp_path, "name: x\n")
    assert main(["run", str(path), "--resume", "--results", str(tmp_path / "r")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_bad_sweeps_and_dry_run_start_nothing(tmp_path):
    """In a fresh interpreter: every bad file fails and a dry run prints the trials, and Ray was never even
    imported, let alone started."""
    runs = [run_args(case, write_sweep(tmp_path, BAD[case][0], f"{case}.yaml"), tmp_path / "r") for case in BAD]
    good = write_sweep(tmp_path, "name: ok\naxes: {seed: [0, 1, 2]}\n", "ok.yaml")
    code = f"""
import json, sys, contextlib, io
from orchestrator.cli import main
rcs = []
with contextlib.redirect_stderr(io.StringIO()):
    for args in {runs!r}:
        rcs.append(main(args))
out = io.StringIO()
with contextlib.redirect_stdout(out):
    dry = main(["run", {str(good)!r}, "--dry-run", "--results", {str(tmp_path / "r")!r}])
print(json.dumps({{"rcs": rcs, "dry": dry, "out": out.getvalue(), "ray": "ray" in sys.modules}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["rcs"] == [2] * len(BAD)
    assert res["dry"] == 0 and "3 trials" in res["out"] and "0 already completed, 3 to run" in res["out"]
    assert res["ray"] is False
    assert not (tmp_path / "r").exists()


def test_user_error_is_raised_by_the_loader(tmp_path):
    with pytest.raises(UserError, match=r"axes\.seed\[1\]: expected int"):
        sweep_of(tmp_path, "name: x\naxes: {seed: [0, 1.5]}\n")


def test_set_forces_a_field_on_every_trial_and_is_saved_with_the_sweep(tmp_path):
    """--set FIELD=VALUE (validate, run, submit): over base, axes and include rules alike, so `--set epochs=2
    --set seed=0` shrinks any study to a smoke test; keys change with it; the saved text is the sweep that ran."""
    from orchestrator.sweep import parse_sweep

    path = write_sweep(tmp_path, """\
name: s
base: {epochs: 5, width: 4}
axes:
  shape: [point, line]
  seed: [0, 1, 2]
include:
  - {shape: point, dropout: 0.1, seed: [0, 1, 2]}
""")
    full = load_sweep(path, results=str(tmp_path / "results"))
    smoke = load_sweep(path, results=str(tmp_path / "results"), overrides=["epochs=2", "seed=0"])
    assert len(full.trials) == 9 and len(smoke.trials) == 3
    assert {(t.config.epochs, t.config.seed) for t in smoke.trials} == {(2, 0)}
    assert not {t.key for t in smoke.trials} & {t.key for t in full.trials}
    # the text saved beside the results re-reads as the same trials, and says where the values came from
    assert "# basin --set epochs=2 --set seed=0" in smoke.text
    import yaml

    again = parse_sweep(yaml.safe_load(smoke.text), "saved", smoke.text, results=str(tmp_path / "results"))
    assert [t.key for t in again.trials] == [t.key for t in smoke.trials]
    # a file with a `set` of its own: merged, the command line winning
    path.write_text(path.read_text() + "set: {width: 8, epochs: 3}\n")
    both = load_sweep(path, results=str(tmp_path / "results"), overrides=["epochs=2"])
    assert {(t.config.width, t.config.epochs) for t in both.trials} == {(8, 2)}
    assert yaml.safe_load(both.text)["set"] == {"width": 8, "epochs": 2}


@pytest.mark.parametrize("item, says", [
    ("epoch=2", "--set epoch: unknown trial field (did you mean 'epochs'?)"),
    ("epochs=two", "--set epochs: expected int, got 'two'"),
    ("epochs", "--set epochs: expected FIELD=VALUE, e.g. --set epochs=2"),
    ("shape=cube", "sweep.yaml: --set shape: expected one of point, line, curve, simplex, got 'cube'"),
])
def test_bad_set_is_one_line(item, says, tmp_path, capsys):
    path = write_sweep(tmp_path, "name: s\nbase: {epochs: 2}\naxes: {seed: [0, 1]}\n")
    assert main(["validate", str(path), "--set", item]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
