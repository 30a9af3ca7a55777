"""Checks before anything starts (orchestrator/preflight.py): on a fixed local machine, resources no node
can give and data sets that are not on disk are refused by `basin run` before Ray starts and before any file
is written, with the exact line `basin validate` prints too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from orchestrator.cli import main


def sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: pre\nresults: {tmp_path / 'results'}\nmlflow: false\naxes: {{seed: [0, 1]}}\n" + body)
    return path


def refused(path: Path, capsys, *extra: str) -> tuple[str, str]:
    """`basin run` and `basin validate` on `path`: both exit 2; returns their error lines."""
    capsys.readouterr()
    assert main(["run", str(path), *extra]) == 2
    run_err = capsys.readouterr().err
    assert main(["validate", str(path), *[e for e in extra if e != "--num-cpus=2"]]) == 2
    validate_err = capsys.readouterr().err
    assert run_err.count("\n") == validate_err.count("\n") == 1
    assert run_err.removeprefix("basin run: error: ") == validate_err.removeprefix("basin validate: error: ")
    assert not (path.parent / "results").exists()  # nothing written
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # Ray never started
    return run_err, validate_err


def test_gpus_this_machine_lacks_are_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, whatever the machine has
    path = sweep(tmp_path, "resources: {cpus: 1, gpus: 3}\n")
    err, _ = refused(path, capsys)
    cpus = os.cpu_count()
    assert err == (f"basin run: error: {path}: resources.gpus: a trial needs 1 CPU and 3 GPU, but this machine has "
                   f"{cpus} CPU and 0 GPU (on a cluster: basin run --address, basin validate --cluster)\n")
    capsys.readouterr()
    assert main(["validate", str(path), "--cluster"]) == 0  # a cluster's nodes are not this machine's


def test_more_cpus_than_the_local_ray_gets_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    path = sweep(tmp_path, "resources: {cpus: 3}\n")
    capsys.readouterr()
    assert main(["run", str(path), "--num-cpus=2"]) == 2
    assert "resources.cpus: a trial needs 3 CPU and 0 GPU, but this machine has 2 CPU" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("dataset, expected, how", [
    ("cifar10", "cifar-10-batches-py/data_batch_1", "set download: true, or place the files there"),
    ("svhn", "train_32x32.mat", "set download: true, or place the files there"),
    ("tiny_imagenet", "tiny-imagenet-200/wnids.txt", "it has no download: unpack the official zip into data_dir"),
])
def test_a_data_set_not_on_disk_is_named_with_the_path_expected(tmp_path, capsys, dataset, expected, how):
    data = tmp_path / "data"
    path = sweep(tmp_path, f"base: {{dataset: {dataset}, data_dir: {data}, model: cnn}}\n")
    err, _ = refused(path, capsys)
    assert err == (f"basin run: error: {path}: data_dir: dataset {dataset} is not on disk: expected "
                   f"{data / expected} ({how}) (trial seed=0)\n")


def test_download_permission_or_files_on_disk_pass_and_published_corruptions_need_their_folder(tmp_path, capsys):
    data = tmp_path / "data"
    ok = sweep(tmp_path, f"base: {{dataset: cifar10, data_dir: {data}, download: true, model: cnn}}\n")
    assert main(["validate", str(ok)]) == 0
    (data / "cifar-10-batches-py").mkdir(parents=True)
    (data / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    base = f"dataset: cifar10, data_dir: {data}, model: cnn, corruptions: fog, corruption_source: published"
    path = sweep(tmp_path, f"base: {{{base}}}\n")
    err, _ = refused(path, capsys)
    assert err.endswith(f"corruption_dir: the published corruptions of cifar10 are not on disk: expected the folder "
                        f"{data / 'CIFAR-10-C'} (no download) (trial seed=0)\n")
    (data / "CIFAR-10-C").mkdir()
    assert main(["validate", str(path)]) == 0


def test_validate_into_a_closed_pipe_ends_quietly(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: pre\nresults: {tmp_path / 'results'}\naxes: {{seed: {list(range(3000))}}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # 3000 lines: more than a pipe holds, so the writer sees it close
    p = subprocess.run(f"{sys.executable} -m orchestrator.cli validate {path} --show 100000 | head -1",
                       shell=True, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.stdout.startswith(f"{path}: ok: sweep 'pre', 3000 trials") and p.stdout.count("\n") == 1
    assert p.stderr == ""
