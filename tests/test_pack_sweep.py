"""Packed trials through `basin run` on a real local Ray, MLflow (SQLite) and Parquet: a pack's output is
that of its trials run one by one (same rows, same MLflow runs, numbers to float tolerance); a member that
fails leaves the others' rows exactly once and is retried alone from its checkpoint; a packing that cannot
fit is refused before anything starts, saying how many fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, assert_mirror_matches_parquet, write_sweep

from analysis.load import load, read_arrow
from orchestrator import packing
from orchestrator.cli import UserError, main
from orchestrator.runner import run_sweep
from orchestrator.store import Store
from orchestrator.sweep import load_sweep

pytestmark = pytest.mark.timeout(300)

AXES = "axes:\n  seed: [0, 1]\n  label_noise: [0.0, 0.2]\n"


def sweep_file(tmp_path: Path, name: str, body: str, base: dict | None = None) -> Path:
    base = {**TINY, "shape": "line", **(base or {})}
    return write_sweep(tmp_path, f"name: {name}\nbase: {json.dumps(base)}\nresults: {tmp_path / name}\n" + body,
                       f"{name}.yaml")


def test_a_packed_sweep_writes_what_its_trials_write_alone(ray_local, tmp_path, capsys):
    alone = load_sweep(sweep_file(tmp_path, "alone", AXES))
    packed = load_sweep(sweep_file(tmp_path, "packed", AXES + "pack: 3\n"))
    assert [t.key for t in packed.trials] == [t.key for t in alone.trials]  # packing is not part of a trial
    assert [len(u) for u in packing.units(packed.trials, 3)] == [3, 1]
    for sweep in (alone, packed):
        summary = run_sweep(sweep, every=1, report=False)
        assert summary.ok and summary.completed == 4
    assert "4 to run in 2 packs of up to 3" in capsys.readouterr().out

    a, p = load(alone.dir), load(packed.dir)
    assert sorted(p.trials.trial_key) == sorted(a.trials.trial_key) and set(p.trials.attempt) == {0}
    for table, keys in (("epochs", ["epoch"]), ("evals", ["split", "point"])):
        x = getattr(a, table).sort_values(["trial_key", *keys]).reset_index(drop=True)
        y = getattr(p, table).sort_values(["trial_key", *keys]).reset_index(drop=True)
        assert len(x) == len(y) and (x[["trial_key", *keys]] == y[["trial_key", *keys]]).all().all(), table
        for col in ("train_loss", "val_acc") if table == "epochs" else ("accuracy", "nll"):
            assert y[col].to_numpy() == pytest.approx(x[col].to_numpy(), abs=1e-4), (table, col)
    # the label noise each member trained with is its own, not its pack's first member's
    noise = p.trials.set_index("trial_key").label_noise_actual
    assert noise[[t.key for t in packed.trials if t.config.label_noise == 0.2]].gt(0.1).all()
    assert noise[[t.key for t in packed.trials if t.config.label_noise == 0.0]].eq(0.0).all()
    assert_mirror_matches_parquet(packed.mlflow, packed)  # one complete MLflow run per trial


def test_a_failing_member_leaves_the_others_exactly_once_and_resumes_alone(ray_local, tmp_path):
    path = sweep_file(tmp_path, "member", """
axes:
  seed: [0, 1, 2]
include:
  - when: {seed: 1}
    then: {extra: {basin_fail_at_epoch: 2, basin_fail_attempts: 1}}
pack: 3
retries: 1
""", {"epochs": 3})
    sweep = load_sweep(path)
    assert [len(u) for u in packing.units(sweep.trials, 3)] == [3]  # `extra` does not split a pack
    flaky = sweep.trials[1].key
    summary = run_sweep(sweep, every=1, report=False)
    assert summary.ok and summary.completed == 3

    rows = sorted((r["trial_key"], r["attempt"], r["status"])
                  for r in read_arrow(sweep.dir, "trials", ["trial_key", "attempt", "status"]).to_pylist())
    steady = [t.key for t in sweep.trials if t.key != flaky]
    assert rows == sorted([(k, 0, "completed") for k in steady] + [(flaky, 0, "failed"), (flaky, 1, "completed")])
    store = Store(sweep.dir)
    assert [len(store.attempts(k)) for k in steady] == [1, 1]           # not re-run with the retried member
    assert store.attempts(flaky)[1]["resumed_from_epoch"] == 2
    raw = read_arrow(sweep.dir, "epochs", ["trial_key", "epoch", "attempt"]).to_pylist()
    for k in steady:
        assert sorted(r["epoch"] for r in raw if r["trial_key"] == k) == [1, 2, 3]
    assert sorted((r["epoch"], r["attempt"]) for r in raw if r["trial_key"] == flaky) == [(1, 1), (2, 1), (3, 1)]
    assert_mirror_matches_parquet(sweep.mlflow, sweep)


def test_a_packing_that_cannot_fit_is_refused_before_anything_starts(tmp_path, capsys):
    from trainers.pack import footprint

    base = {"model": "cresnet20", "width": 16, "dataset": "synthetic_cifar10", "shape": "line", "batch_size": 128}
    body = "axes:\n  seed: [0, 1, 2, 3, 4, 5, 6, 7]\nresources: {memory: 2}\n"
    per, shared = footprint(load_sweep(sweep_file(tmp_path, "probe", body, base)).trials[0].config)
    fit = int((packing.HEADROOM * 2 * packing.GiB - shared) // per)
    assert 1 <= fit < 8
    ok = load_sweep(sweep_file(tmp_path, "fits", body + f"pack: {fit}\n", base))
    assert packing.pack_size(ok) == fit
    big = load_sweep(sweep_file(tmp_path, "big", body + f"pack: {fit + 1}\n", base))
    with pytest.raises(UserError) as e:
        run_sweep(big, report=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{big.path}: pack: {fit + 1} trials of cresnet20")
    assert msg.endswith(f"at most {fit} fit") and "resources.memory 2 GiB" in msg
    assert not Path(big.dir).exists()                                   # nothing written
    assert main(["validate", big.path]) == 2 and msg in capsys.readouterr().err  # validate says the same
    # auto: one per CPU trial (packing does not pay on CPUs); with a GPU's memory, as many as fit
    assert packing.pack_size(load_sweep(sweep_file(tmp_path, "auto", body + "pack: auto\n", base))) == 1
    gpu = load_sweep(sweep_file(tmp_path, "gpu", body.replace("{memory: 2}", "{gpus: 1, gpu_memory: 2}")
                                + "pack: auto\n", base))
    assert packing.pack_size(gpu) == fit
    # a share of a GPU too small for one trial is refused too, packed or not
    tiny = load_sweep(sweep_file(tmp_path, "tiny", body.replace("{memory: 2}", "{gpus: 0.05, gpu_memory: 2}"), base))
    with pytest.raises(UserError) as e:
        packing.pack_size(tiny)
    assert str(e.value).startswith(f"{tiny.path}: resources: a trial of cresnet20 on synthetic_cifar10 needs about")
    assert str(e.value).endswith("but one gets 0.1 GiB (90% of 0.05 x 2 GiB of GPU memory)")


@pytest.mark.parametrize("value, expected", [("pack: 0", "pack: expected a number of trials per pack"),
                                             ("pack: many", "pack: expected a number of trials per pack"),
                                             ("resources: {memory: -1}", "resources.memory: expected a positive")])
def test_bad_packing_fields_are_refused_in_one_line(tmp_path, value, expected):
    with pytest.raises(UserError) as e:
        load_sweep(sweep_file(tmp_path, "bad", AXES + value + "\n"))
    assert expected in str(e.value) and "\n" not in str(e.value)
