"""MNIST and Fashion-MNIST from their original idx files (gzipped or not, read where they lie), the one rule for
where they are (trainers/data_files.py: the reader and `basin validate` agree), strict checks of bad files, and
the train_size / test_size subsets. Files are written here in the real format (no mocks)."""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.cli import main
from trainers import data, data_files
from trainers.config import ConfigError, make_config
from trainers.train import run_trial

NAMES = data_files.IDX_NAMES  # train images, train labels, test images, test labels


def idx_bytes(array: np.ndarray, dtype: int = 0x08) -> bytes:
    """The idx format: 0x0000, the data type, the number of dims; dims as big-endian uint32; raw bytes."""
    return bytes([0, 0, dtype, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write(path: Path, content: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(content)
    else:
        path.write_bytes(content)
    return path


def write_set(folder: Path, gz: bool, n_train: int = 60, n_test: int = 30, seed: int = 0) -> dict:
    """The four files of a small MNIST-like set in `folder`; returns its arrays. Labels cycle through the 10
    classes with a skew (class c has about 2x the images of class c - 5), so stratification is visible."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.permutation(np.arange(n) % 15 % 10).astype(np.uint8)
        write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(x), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(y), gz)
        arrays[prefix] = (x, y)
    return arrays


def images_of(d_x: torch.Tensor, d: data.Data) -> np.ndarray:
    """Normalised images back to the uint8 (N, 28, 28) they were read from."""
    return d.raw(d_x).numpy()[:, 0]


# -- reading in place -----------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("name,layout", [("fashion_mnist", ""), ("fashion_mnist", "FashionMNIST/raw"),
                                         ("mnist", ""), ("mnist", "MNIST/raw")])
def test_idx_files_are_read_where_they_lie(tmp_path, name, layout, gz):
    arrays = write_set(tmp_path / layout if layout else tmp_path, gz)
    d = data.load(name, str(tmp_path), val_fraction=0.2)
    (tx, ty), (sx, sy) = arrays["train"], arrays["t10k"]
    assert d.in_shape == (1, 28, 28) and d.classes == 10
    assert np.array_equal(images_of(d.test_x, d), sx) and d.test_y.tolist() == sy.tolist()  # in file order
    assert len(d.train_y) + len(d.val_y) == 60 and len(d.val_y) == 12
    got = np.concatenate([images_of(d.train_x, d), images_of(d.val_x, d)])
    order = np.lexsort(got.reshape(60, -1).T)
    want = np.lexsort(tx.reshape(60, -1).T)
    assert np.array_equal(got[order], tx[want])  # the train file, split in two, pixels intact
    assert torch.cat([d.train_y, d.val_y])[order].tolist() == ty[want].tolist()


def test_a_trial_trains_on_idx_files_in_data_dir(tmp_path):
    """The real loading path of a trial (`dataset: fashion_mnist, data_dir: tmp`): data_dir wins over the
    Debian package's copy, which would have 60,000 images."""
    arrays = write_set(tmp_path, gz=True, n_train=80, n_test=40)
    cfg = make_config({"dataset": "fashion_mnist", "data_dir": str(tmp_path), "shape": "point", "epochs": 1,
                       "warmup_epochs": 0, "batch_size": 16, "width": 2, "checkpoint_every": 0,
                       "ensemble_samples": 0})
    rows = run_trial(cfg)
    assert [r["epoch"] for r in rows["epochs"]] == [1]
    assert any(e["split"] == "test" for e in rows["evals"])
    assert rows["predictions"] and all(p["labels"].tolist() == arrays["t10k"][1].tolist() for p in rows["predictions"])


def test_the_torchvision_folder_comes_first_and_one_folder_gives_all_four_files(tmp_path):
    direct = write_set(tmp_path, gz=False, seed=1)
    own = write_set(tmp_path / "FashionMNIST" / "raw", gz=True, seed=2)
    d = data.load("fashion_mnist", str(tmp_path))
    assert np.array_equal(images_of(d.test_x, d), own["t10k"][0])
    assert not np.array_equal(own["t10k"][0], direct["t10k"][0])
    # a folder missing one file is passed over as a whole, never mixed with another folder's files
    os.remove(tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")
    assert data_files.find_idx("fashion_mnist", str(tmp_path)) == {n: str(tmp_path / n) for n in NAMES}


# -- a missing data set: one line, the same from the reader and from `basin validate` ---------------------
def validate_line(tmp_path: Path, capsys, base: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: v\nresults: {tmp_path / 'results'}\nmlflow: false\nbase: {{{base}}}\n")
    capsys.readouterr()
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    return err if code else ""


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_missing_idx_files_are_one_line_naming_every_folder(tmp_path, capsys, monkeypatch, name):
    if name == "fashion_mnist":  # the Debian package may be installed here: look in an empty folder instead
        monkeypatch.setitem(data_files.SYSTEM_FOLDERS, name, str(tmp_path / "usr-share"))
    root = tmp_path / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"")  # a partial copy is named
    with pytest.raises(data.DataError) as e:
        data.load(name, str(root))
    msg = str(e.value)
    folders = data_files.idx_folders(name, str(root))
    assert "\n" not in msg and msg.startswith(f"dataset {name} is not on disk: ")
    assert all(f in msg for f in folders) and str(root) in folders
    assert "download: true" in msg
    if name == "fashion_mnist":
        assert str(tmp_path / "usr-share") in folders and "apt-get install dataset-fashion-mnist" in msg
    else:
        assert f"{root / 'MNIST' / 'raw'} has only train-images-idx3-ubyte" in msg
    # the driver-side check says the same line, before any trial runs
    assert data_files.data_problem(name, str(root), download=False) == msg
    assert validate_line(tmp_path, capsys, f"dataset: {name}, data_dir: {root}").rstrip("\n").endswith(
        f"data_dir: {msg}")
    assert data_files.data_problem(name, str(root), download=True) == ""  # torchvision may fetch them


def test_validate_passes_when_the_files_are_there(tmp_path, capsys):
    write_set(tmp_path / "MNIST" / "raw", gz=True)
    assert validate_line(tmp_path, capsys, f"dataset: mnist, data_dir: {tmp_path}") == ""


# -- bad files: one line each, naming the file ------------------------------------------------------------
X = np.zeros((4, 28, 28), np.uint8)
Y = np.array([0, 1, 2, 3], np.uint8)
BAD = {  # case -> (the file that is bad, its content, the end of the message)
    "truncated images": (0, idx_bytes(X)[:-5], r"truncated idx file: 4 x 28 x 28 = 3136 bytes of data expected, "
                                                r"3131 found"),
    "truncated header": (1, idx_bytes(Y)[:6], r"truncated idx file: 6 bytes, shorter than its 8-byte header"),
    "wrong magic": (0, b"\x1f\x8b" + idx_bytes(X)[2:], r"not an idx file \(magic number 1f8b0803, expected "
                                                        r"00000803\)"),
    "wrong dtype": (0, idx_bytes(X, dtype=0x0D), r"idx data type 0x0d, expected 0x08 \(unsigned bytes\)"),
    "wrong dims": (1, idx_bytes(Y.reshape(2, 2)), r"idx file of 2 dimensions, expected 1"),
    "too long": (1, idx_bytes(Y) + b"\0", r"idx file longer than its header says: 4 = 4 bytes of data expected, "
                                          r"5 found"),
    "not 28x28": (0, idx_bytes(np.zeros((4, 32, 32), np.uint8)), r"images of 32 x 32, expected 28 x 28 for "
                                                                 r"dataset fashion_mnist"),
    "label count": (1, idx_bytes(Y[:3]), r"3 labels for the 4 images of .*train-images-idx3-ubyte(\.gz)?"),
    "label range": (1, idx_bytes(np.array([0, 1, 10, 3], np.uint8)), r"label 10 out of range \(dataset "
                                                                     r"fashion_mnist has labels 0-9\)"),
}


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_idx_files_are_one_line_naming_the_file(tmp_path, case, gz):
    which, content, expected = BAD[case]
    good = [idx_bytes(X), idx_bytes(Y), idx_bytes(X), idx_bytes(Y)]
    good[which] = content
    paths = [write(tmp_path / n, c, gz) for n, c in zip(NAMES, good, strict=True)]
    with pytest.raises(data.DataError, match=f"^{re.escape(str(paths[which]))}: {expected}$") as e:
        data.load("fashion_mnist", str(tmp_path))
    assert "\n" not in str(e.value)


def test_a_cut_off_gzip_stream_is_one_line_naming_the_file(tmp_path):
    paths = [write(tmp_path / n, c, True) for n, c in zip(NAMES, [idx_bytes(X), idx_bytes(Y)] * 2, strict=True)]
    paths[0].write_bytes(paths[0].read_bytes()[:-30])
    with pytest.raises(data.DataError, match=f"^{re.escape(str(paths[0]))}: cannot be read: ") as e:
        data.load("fashion_mnist", str(tmp_path))
    assert "\n" not in str(e.value)


# -- train_size and test_size ---------------------------------------------------------------------------
def within_one_of_share(subset: np.ndarray, full: np.ndarray, n: int) -> bool:
    share = n * np.bincount(full, minlength=10) / len(full)
    return bool(np.all(np.abs(np.bincount(subset, minlength=10) - share) < 1))


@pytest.fixture()
def skewed(tmp_path) -> tuple[str, dict]:
    return str(tmp_path), write_set(tmp_path, gz=True, n_train=300, n_test=150)


def test_subsets_are_stratified_and_drawn_before_the_validation_split(skewed):
    root, arrays = skewed
    ty, sy = arrays["train"][1], arrays["t10k"][1]
    d = data.load("mnist", root, val_fraction=0.2, train_size=101, test_size=37)
    clean = torch.cat([d.train_y, d.val_y]).numpy()
    assert len(clean) == 101 and len(d.val_y) == 20 and len(d.test_y) == 37  # the split comes out of the subset
    assert within_one_of_share(clean, ty, 101) and within_one_of_share(d.test_y.numpy(), sy, 37)
    # disjoint: no training image is a validation image, and together they are 101 images of the train file
    train, val = images_of(d.train_x, d).reshape(81, -1), images_of(d.val_x, d).reshape(20, -1)
    rows = {r.tobytes() for r in arrays["train"][0].reshape(300, -1)}
    assert not {r.tobytes() for r in train} & {r.tobytes() for r in val}
    assert {r.tobytes() for r in np.concatenate([train, val])} <= rows
    assert d.classes == 10


def test_a_trial_trains_on_its_subsets(skewed):
    root, arrays = skewed
    cfg = make_config({"dataset": "mnist", "data_dir": root, "shape": "point", "epochs": 1, "warmup_epochs": 0,
                       "batch_size": 16, "width": 2, "checkpoint_every": 0, "ensemble_samples": 0,
                       "train_size": 100, "test_size": 20})
    rows = run_trial(cfg)
    labels = rows["predictions"][0]["labels"].tolist()
    assert len(labels) == 20 and within_one_of_share(np.array(labels), arrays["t10k"][1], 20)


def test_subset_is_seeded():
    y = np.arange(1000) % 7
    a, b, c = (data.stratified_subset(y, 100, s) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 100 and len(np.unique(a)) == 100 and within_one_of_share(y[a], y, 100)


def test_every_trial_of_a_study_sees_the_same_subset_and_noise_comes_after_it(skewed):
    """The subset is drawn from the validation split's seed: the same for any noise_seed or label_noise
    (as the split is), and the noise is put on the subset's own training labels."""
    root, arrays = skewed
    clean = data.load("mnist", root, train_size=120)
    noisy = data.load("mnist", root, train_size=120, label_noise=0.5, noise_seed=7)
    assert torch.equal(clean.train_x, noisy.train_x) and torch.equal(clean.val_y, noisy.val_y)
    assert within_one_of_share(torch.cat([clean.train_y, clean.val_y]).numpy(), arrays["train"][1], 120)
    changed = (clean.train_y != noisy.train_y).float().mean().item()
    assert noisy.noise_actual == pytest.approx(changed) and 0.3 < changed < 0.7
    other = data.load("mnist", root, train_size=120, label_noise=0.5, noise_seed=8)
    assert torch.equal(other.train_x, clean.train_x) and not torch.equal(other.train_y, noisy.train_y)
    full = data.load("mnist", root)  # test_size 0: every test image (normalised with the subset's statistics)
    assert np.array_equal(images_of(full.test_x, full), images_of(clean.test_x, clean))


def test_subset_sizes_the_data_cannot_give_are_one_line(skewed):
    root, _ = skewed
    with pytest.raises(data.DataError, match=r"^train_size: expected 0 \(all\) or 10 to 300 \(the training images "
                                             r"of dataset mnist, 10 classes\), got 301$"):
        data.load("mnist", root, train_size=301)
    with pytest.raises(data.DataError, match=r"^test_size: expected 0 \(all\) or 10 to 150 .*, got 9$"):
        data.load("mnist", root, test_size=9)


def test_config_refuses_subsets_larger_than_the_data_set_and_keys_keep_their_defaults(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^train_size: expected 0 \(all\) or 10 to 60000 \(the training images "
                                          r"of fashion_mnist, 10 classes\), got 60001$"):
        make_config({"dataset": "fashion_mnist", "train_size": 60_001})
    with pytest.raises(ConfigError, match=r"^test_size: expected 0 \(all\) or 3 to 359 .*, got 2$"):
        make_config({"test_size": 2, "num_classes": 3})
    line = validate_line(tmp_path, capsys, "dataset: fashion_mnist, train_size: 70000")
    assert line.count("\n") == 1 and "train_size: expected 0 (all) or 10 to 60000" in line
    # 0 is the default: earlier trials keep their keys (and results); a subset is a different trial
    base = make_config({"dataset": "fashion_mnist"})
    assert make_config({"dataset": "fashion_mnist", "train_size": 0, "test_size": 0}).key() == base.key()
    assert make_config({"dataset": "fashion_mnist", "train_size": 1000}).key() != base.key()


# -- the installed Debian package --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_the_installed_debian_fashion_mnist(tmp_path):
    paths = data_files.find_idx("fashion_mnist", str(tmp_path / "empty"))
    assert paths and all(p.startswith("/usr/share/datasets/fashion-mnist/") for p in paths.values())
    tx, ty, sx, sy = data.LOADERS["fashion_mnist"](str(tmp_path / "empty"), False)
    assert tx.shape == (60_000, 1, 28, 28) and sx.shape == (10_000, 1, 28, 28) and tx.dtype == np.uint8
    assert np.bincount(ty).tolist() == [6000] * 10 and np.bincount(sy).tolist() == [1000] * 10
    assert tx.min() == 0 and tx.max() == 255 and sx.min() == 0 and sx.max() == 255
    d = data.load("fashion_mnist", str(tmp_path / "empty"), train_size=1000)
    assert len(d.train_y) + len(d.val_y) == 1000
    assert np.bincount(torch.cat([d.train_y, d.val_y]).numpy()).tolist() == [100] * 10
