"""Property-based tests (hypothesis) over sweep files and trial configs: every valid generated file validates
into the product of its axes; every file with one fault is refused by `basin run` with one line naming the
file and the field, before Ray starts and before anything is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.sweep import load_sweep
from trainers.config import ConfigError, make_config

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Fields whose values never fold into one another (no shape or method canonicalisation), with valid values.
VALID = {
    "seed": st.integers(0, 10_000),
    "lr": st.floats(1e-4, 1.0, allow_nan=False),
    "width": st.integers(1, 64),
    "label_noise": st.floats(0.0, 0.9, allow_nan=False),
    "batch_size": st.integers(1, 512),
    "epochs": st.integers(1, 50),
    "optimizer": st.sampled_from(["sgd", "adam"]),
    "batchnorm": st.booleans(),
}


@st.composite
def valid_sweeps(draw) -> dict:
    names = draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=3, unique=True))
    axes = {n: draw(st.lists(VALID[n], min_size=1, max_size=3, unique_by=repr)) for n in names}
    axes = {n: v for n, v in axes.items() if len({repr(x) for x in v}) == len(v)}
    base_names = draw(st.lists(st.sampled_from(sorted(set(VALID) - set(names))), max_size=2, unique=True))
    base = {n: draw(VALID[n]) for n in base_names}
    base["warmup_epochs"] = 0  # any epochs value is then valid
    return {"name": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)), "base": base,
            "axes": axes}


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@SETTINGS
@given(valid_sweeps())
def test_valid_generated_sweeps_validate_into_the_product_of_their_axes(tmp_path, data):
    sweep = load_sweep(write(tmp_path, data), results=str(tmp_path / "r"))
    n = 1
    for v in data["axes"].values():
        n *= len(v)
    assert len(sweep.trials) == n and len({t.key for t in sweep.trials}) == n
    assert len({t.name for t in sweep.trials}) == n


# One fault each: (how to break a valid sweep, the field the message must name).
FAULTS = [
    (lambda d: d.update(resoures={"cpus": 1}), "resoures"),
    (lambda d: d["base"].update(lernrate=0.1), "base.lernrate"),
    (lambda d: d["base"].update(epochs="ten"), "base.epochs"),
    (lambda d: d["base"].update(lr=-1.0), "base.lr"),
    (lambda d: d["base"].update(label_noise=1.5), "base.label_noise"),
    (lambda d: d["base"].update(batchnorm=1), "base.batchnorm"),
    (lambda d: d["axes"].update(width=[]), "axes.width"),
    (lambda d: d["axes"].update(width=8), "axes.width"),
    (lambda d: d["axes"].update(seed=[1, 1]), "axes.seed"),
    (lambda d: d["axes"].update(dataset=["digits", "imagenet"]), "axes.dataset[1]"),
    (lambda d: d.update(resources={"cpus": 0}), "resources.cpus"),
    (lambda d: d.update(retries=-1), "retries"),
    (lambda d: d.update(name="bad name"), "name"),
    (lambda d: d.update(max_trials=0), "max_trials"),
    (lambda d: d.update(include=[{"when": {"seed": 0}}]), "include[0]"),
    (lambda d: d.update(exclude="seed"), "exclude"),
]


@pytest.mark.parametrize("which", range(len(FAULTS)))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=valid_sweeps())
def test_every_faulty_sweep_is_refused_in_one_line_naming_file_and_field_and_nothing_starts(
        tmp_path_factory, capsys, data, which):
    tmp = tmp_path_factory.mktemp("fault")
    results = tmp / "results"
    data = json.loads(json.dumps(data))
    data["base"].pop("warmup_epochs")
    for field in ("epochs", "lr", "label_noise", "batchnorm", "width", "seed", "dataset"):  # the fault's own
        data["base"].pop(field, None)
        data["axes"].pop(field, None)
    data["axes"] = data["axes"] or {"batch_size": [32, 64]}
    data["base"]["warmup_epochs"] = 0
    breaks, field = FAULTS[which]
    breaks(data)
    path = write(tmp, data)
    capsys.readouterr()
    assert main(["run", str(path), "--results", str(results), "--mlflow", "false"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err  # one line
    assert err.startswith(f"basin run: error: {path}: ") and f": {field}:" in err, err
    assert not results.exists()  # nothing written
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # no trial started


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["lr", "epochs", "width", "label_noise", "dropout", "beta", "seed",
                                        "batch_size", "shape", "method", "samplers", "ece_bins"]),
                       st.one_of(st.integers(-3, 3), st.floats(-2, 2, allow_nan=False), st.booleans(),
                                 st.sampled_from(["", "line", "point", "swa", "all", "x"])), max_size=4))
def test_a_trial_config_is_valid_or_refused_in_one_line_naming_its_field(values):
    try:
        cfg = make_config(values)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and msg.split(":")[0] in {*values, "warmup_epochs", "endpoints", "shape", "method"}
        return
    assert cfg.key() == make_config(cfg.to_dict()).key()  # a valid config round-trips through its values


@pytest.mark.parametrize("n", [10**7, 10**12])
def test_a_huge_grid_is_refused_from_its_axes_sizes_without_expanding(tmp_path, capsys, n):
    digits = len(str(n)) - 1
    axes = {f: list(range(10)) for f in ("seed", "noise_seed", "width", "batch_size", "epochs", "ece_bins",
                                         "alpha_grid", "simplex_grid", "bn_batches", "ensemble_samples",
                                         "weight_projection", "mpo_size")[:digits]}
    path = write(tmp_path, {"name": "huge", "axes": axes})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"basin validate: error: {path}: axes: {n} trials (axes {' x '.join(['10'] * digits)}), "
                   f"more than max_trials (100000); set max_trials: {n} in the file to run them all\n")
