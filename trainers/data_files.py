"""Where each data set's files must be, checked before a sweep starts (no torch: the driver and `basin
validate` run it). trainers/data.py reads the files; this says whether they are there, so a missing data set
is one line naming the paths instead of a failure inside every trial. For MNIST and Fashion-MNIST it is also
the one rule for where the idx files are: the reader in trainers/data.py opens exactly what `find_idx` finds.
"""

from __future__ import annotations

import os

from trainers import corruption_params

# Images in each split of each data set as published (digits: basin's fixed 80/20 split of scikit-learn's
# 1,797). The training counts bound a trial's memory (the packing check) and `train_size`; both bound
# `test_size`: config checks refuse a subset larger than the data set before anything runs.
TRAIN_SIZES = {"digits": 1797 - 359, "mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000,
               "cifar100": 50_000, "svhn": 73_257, "tiny_imagenet": 100_000, "synthetic_cifar10": 50_000}
TEST_SIZES = {"digits": 359, "mnist": 10_000, "fashion_mnist": 10_000, "cifar10": 10_000, "cifar100": 10_000,
              "svhn": 26_032, "tiny_imagenet": 10_000, "synthetic_cifar10": 10_000}

# -- MNIST and Fashion-MNIST: the original idx files, gzipped or not, read where they lie --------------------
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # <data_dir>/<this>/raw/
# Debian's dataset-fashion-mnist installs the four .gz files here; Debian packages no MNIST (apt-cache search
# mnist finds only Fashion-MNIST), so MNIST comes from data_dir or torchvision's download.
SYSTEM_FOLDERS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
HOW_TO_GET = {"fashion_mnist": "apt-get install dataset-fashion-mnist, or set download: true",
              "mnist": "set download: true, or place the files in data_dir; Debian has no MNIST package"}


def idx_folders(dataset: str, data_dir: str) -> list[str]:
    """Where the idx files of `dataset` may be, in the order they are looked for. The data set's own
    torchvision folder comes before data_dir itself: both data sets use the same file names, so files lying
    directly in data_dir could be either, while <data_dir>/FashionMNIST/raw/ can only be one."""
    root = os.path.expanduser(data_dir)
    folders = [os.path.join(root, TORCHVISION_FOLDERS[dataset], "raw"), root]
    if dataset in SYSTEM_FOLDERS:
        folders.append(SYSTEM_FOLDERS[dataset])
    return folders


def _idx_file(folder: str, name: str) -> str:
    """The file `name` in `folder`, uncompressed (faster to read) or else gzipped; "" when neither is there."""
    for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(path):
            return path
    return ""


def find_idx(dataset: str, data_dir: str) -> dict[str, str] | None:
    """The four idx files of `dataset` (by their IDX_NAMES) from the first folder that holds all four, or
    None. One folder for all four, so a train set never pairs with another copy's test set."""
    for folder in idx_folders(dataset, data_dir):
        paths = {name: _idx_file(folder, name) for name in IDX_NAMES}
        if all(paths.values()):
            return paths
    return None


def idx_missing(dataset: str, data_dir: str) -> str:
    """The one line saying that `dataset`'s idx files are nowhere: every folder looked in, any that holds only
    some of the four files, and how to get them."""
    folders = idx_folders(dataset, data_dir)
    partial = []
    for folder in folders:
        have = [n for n in IDX_NAMES if _idx_file(folder, n)]
        if have:
            partial.append(f"{folder} has only {', '.join(have)}")
    return (f"dataset {dataset} is not on disk: looked for {', '.join(IDX_NAMES)} (each raw or .gz) in "
            f"{', '.join(folders)}{''.join(f'; {p}' for p in partial)} ({HOW_TO_GET[dataset]})")


# data set -> (a file its reader opens first, relative to data_dir; whether torchvision can download it)
EXPECTED: dict[str, tuple[str, bool]] = {
    "cifar10": ("cifar-10-batches-py/data_batch_1", True),
    "cifar100": ("cifar-100-python/train", True),
    "svhn": ("train_32x32.mat", True),
    "tiny_imagenet": ("tiny-imagenet-200/wnids.txt", False),
}  # mnist and fashion_mnist: find_idx; digits (scikit-learn) and synthetic_cifar10 need no files


def data_problem(dataset: str, data_dir: str, download: bool) -> str:
    """Why a trial cannot load `dataset` from `data_dir` ("" when it can, or may download it)."""
    if dataset in TORCHVISION_FOLDERS:  # the reader raises this same line (trainers/data.py)
        return "" if download or find_idx(dataset, data_dir) else idx_missing(dataset, data_dir)
    if dataset not in EXPECTED:
        return ""
    rel, downloadable = EXPECTED[dataset]
    path = os.path.join(os.path.expanduser(data_dir), rel)
    if os.path.exists(path) or (download and downloadable):
        return ""
    how = "set download: true, or place the files there" if downloadable else \
        "it has no download: unpack the official zip into data_dir"
    return f"dataset {dataset} is not on disk: expected {path} ({how})"


def corruption_problem(dataset: str, source: str, corruptions: str, corruption_dir: str, data_dir: str) -> str:
    """Why the published -C folder of a trial that asks for it is missing ("" when there or not asked)."""
    if source != "published" or not corruptions.strip() or dataset not in corruption_params.PUBLISHED:
        return ""
    folder = os.path.join(os.path.expanduser(corruption_dir or data_dir), corruption_params.PUBLISHED[dataset])
    if os.path.isdir(folder):
        return ""
    return f"the published corruptions of {dataset} are not on disk: expected the folder {folder} (no download)"
