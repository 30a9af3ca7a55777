"""Where each data set's files must be, checked before a sweep starts (no torch: the driver and `basin
validate` run it). trainers/data.py reads the files; this only says whether the first file each reader
opens is there, so a missing data set is one line naming the path instead of a failure inside every trial.
"""

from __future__ import annotations

import os

from trainers import corruption_params

# data set -> (a file its reader opens first, relative to data_dir; whether torchvision can download it)
EXPECTED: dict[str, tuple[str, bool]] = {
    "mnist": ("MNIST/raw/train-images-idx3-ubyte", True),
    "fashion_mnist": ("FashionMNIST/raw/train-images-idx3-ubyte", True),
    "cifar10": ("cifar-10-batches-py/data_batch_1", True),
    "cifar100": ("cifar-100-python/train", True),
    "svhn": ("train_32x32.mat", True),
    "tiny_imagenet": ("tiny-imagenet-200/wnids.txt", False),
}  # digits (scikit-learn) and synthetic_cifar10 need no files


def data_problem(dataset: str, data_dir: str, download: bool) -> str:
    """Why a trial cannot load `dataset` from `data_dir` ("" when it can, or may download it)."""
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
