"""Data: digits offline, torchvision readers on small files written here in their on-disk formats, label noise."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from trainers import data

RNG = np.random.default_rng(0)


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's IDX format: big-endian magic (0x08 = uint8, then the number of dims), dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 50, n_test: int = 20) -> dict:
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", x)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", y)
        arrays["train" if prefix == "train" else "test"] = (x, y)
    return arrays


def write_cifar(root: Path, classes: int, n_per_file: int = 12) -> dict:
    """CIFAR's python pickles: dicts with a (N, 3072) uint8 'data' array and a label list."""
    folder, label_key = ("cifar-10-batches-py", "labels") if classes == 10 else ("cifar-100-python", "fine_labels")
    files = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]) if classes == 10 else (["train"], ["test"])
    (root / folder).mkdir(parents=True)
    arrays = {}
    for split, names in zip(("train", "test"), files, strict=True):
        xs, ys = [], []
        for name in names:
            x = RNG.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
            y = RNG.integers(0, classes, n_per_file).tolist()
            with open(root / folder / name, "wb") as f:
                pickle.dump({"data": x, label_key: y}, f)
            xs.append(x)
            ys += y
        arrays[split] = (np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys))
    meta_name, meta_key = ("batches.meta", "label_names") if classes == 10 else ("meta", "fine_label_names")
    with open(root / folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"c{i}" for i in range(classes)]}, f)
    return arrays


def write_svhn(root: Path, n: int = 16) -> dict:
    """SVHN's .mat files: X is (32, 32, 3, N), y is (N, 1) with the digit 0 stored as 10."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split in ("train", "test"):
        x = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = np.arange(n) % 10
        mat = {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None]}
        scipy.io.savemat(root / f"{split}_32x32.mat", mat)
        arrays[split] = (x, y)
    return arrays


def check(d: data.Data, arrays: dict, classes: int, shape: tuple) -> None:
    """The train/val split partitions the train file; the test file is read in order, pixels intact."""
    x_train, y_train = arrays["train"]
    x_test, y_test = arrays["test"]
    assert d.classes == classes
    assert d.in_shape == shape
    assert len(d.train_y) + len(d.val_y) == len(y_train)
    assert sorted(torch.cat([d.train_y, d.val_y]).tolist()) == sorted(np.asarray(y_train).tolist())
    assert d.test_y.tolist() == np.asarray(y_test).tolist()
    # normalisation is per-channel affine: test pixels stay perfectly correlated with the raw ones
    raw_test = torch.from_numpy(np.asarray(x_test).reshape(len(x_test), *shape)).float() / 255
    corr = np.corrcoef(d.test_x.flatten().numpy(), raw_test.flatten().numpy())[0, 1]
    assert corr > 0.99


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats(tmp_path, name, folder):
    arrays = write_mnist(tmp_path, folder)
    check(data.load(name, str(tmp_path), val_fraction=0.2), arrays, 10, (1, 28, 28))


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_formats(tmp_path, name, classes):
    arrays = write_cifar(tmp_path, classes)
    d = data.load(name, str(tmp_path), val_fraction=0.1, augment=True)
    check(d, arrays, max(arrays["train"][1].max(), arrays["test"][1].max()) + 1, (3, 32, 32))
    assert d.augment == "crop_flip"


def test_svhn_format(tmp_path):
    arrays = write_svhn(tmp_path)
    d = data.load("svhn", str(tmp_path), val_fraction=0.25, augment=True)
    check(d, arrays, 10, (3, 32, 32))
    assert d.augment == "crop"  # no flips for digits


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_missing_dataset_is_one_clear_line(tmp_path, name):
    with pytest.raises(data.DataError) as e:
        data.load(name, str(tmp_path / "empty"))
    msg = str(e.value)
    assert "\n" not in msg and name in msg and str(tmp_path / "empty") in msg and "download" in msg


def test_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    # no network here (and none in CI): the download itself fails; the error must say so in one line
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with pytest.raises(data.DataError, match="download failed") as e:
        data.load("mnist", str(tmp_path), download=True)
    assert "\n" not in str(e.value)


def test_digits_split_is_fixed_and_disjoint():
    a, b = data.load("digits"), data.load("digits", label_noise=0.3, noise_seed=5)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.val_x, b.val_x)
    assert len(a.test_y) == 359 and len(a.val_y) + len(a.train_y) == 1797 - 359
    assert abs(float(a.train_x.mean())) < 1e-4  # normalised with train statistics


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_label_noise_rate_and_train_only(rate):
    clean = data.load("digits")
    noisy = data.load("digits", label_noise=rate, noise_seed=3)
    changed = (clean.train_y != noisy.train_y).float().mean().item()
    assert noisy.noise_actual == pytest.approx(changed)
    n = len(clean.train_y)
    assert abs(changed - rate) < 4 * (rate * (1 - rate) / n) ** 0.5  # 4 sigma
    assert torch.equal(clean.val_y, noisy.val_y) and torch.equal(clean.test_y, noisy.test_y)
    assert torch.equal(clean.train_x, noisy.train_x)
    # symmetric: changed labels land on every other class
    moved = noisy.train_y[clean.train_y != noisy.train_y]
    assert len(set(moved.tolist())) == 10


def test_label_noise_has_its_own_seed():
    a = data.noisy_labels(torch.arange(1000) % 10, 0.2, 10, seed=1)
    b = data.noisy_labels(torch.arange(1000) % 10, 0.2, 10, seed=1)
    c = data.noisy_labels(torch.arange(1000) % 10, 0.2, 10, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_crop_flip_shapes_and_content():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = data.augment_batch(x, "crop_flip", g, pad=2)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    # every output pixel is either padding (0) or a pixel of the same image and channel
    for i in range(2):
        for ch in range(3):
            vals = set(out[i, ch].flatten().tolist()) - {0.0}
            assert vals <= set(x[i, ch].flatten().tolist())
    assert torch.equal(data.augment_batch(x, "", g), x)
