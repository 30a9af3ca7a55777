"""Data sets as tensors held on the training device (airbench style: no DataLoader, augmentation on device).

`digits` (scikit-learn, ships with the package) is the offline default; the torchvision sets read their own
on-disk formats from `data_dir` and download only when asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch

# Fixed split seed: every trial of a study sees the same validation and test examples.
SPLIT_SEED = 0


class DataError(RuntimeError):
    """A data set that cannot be loaded; the message is one line naming the data set and folder."""


@dataclass
class Data:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    augment: str = ""               # "", "crop" or "crop_flip"
    noise_actual: float = 0.0       # fraction of train labels that label noise changed

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device) -> Data:
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")})


def _digits(root: str, download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = len(x) // 5  # 359 test examples
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _torchvision(name: str):
    """torchvision's reader for `name`, with md5 checks reduced to presence checks: the readers themselves
    validate the formats, and a lab's own copies (or small test files) need not match upstream checksums."""
    from torchvision import datasets as tv

    if name in ("mnist", "fashion_mnist"):
        return {"mnist": tv.MNIST, "fashion_mnist": tv.FashionMNIST}[name]
    if name in ("cifar10", "cifar100"):
        base = {"cifar10": tv.CIFAR10, "cifar100": tv.CIFAR100}[name]
        return type(base.__name__, (base,), {
            "train_list": [[f, None] for f, _ in base.train_list],
            "test_list": [[f, None] for f, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        })
    return type("SVHN", (tv.SVHN,), {"split_list": {k: [u, f, None] for k, (u, f, _) in tv.SVHN.split_list.items()}})


def _torchvision_split(name: str, root: str, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    cls = _torchvision(name)
    kw = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        ds = cls(root, download=download, **kw)
    except Exception as e:  # torchvision raises RuntimeError for missing files, URLError etc. for downloads
        what = "download failed" if download else "not found (set download: true, or place the files there)"
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"dataset {name}: {what} under {root}: {cause}") from None
    x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    if x.ndim == 3:                    # MNIST-like: N, H, W
        x = x[:, None]
    elif name != "svhn":               # CIFAR: N, H, W, C
        x = x.transpose(0, 3, 1, 2)
    y = ds.labels if name == "svhn" else ds.targets
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    return np.ascontiguousarray(x, dtype=np.uint8), y.astype(np.int64)


def _tv(name: str):
    def load(root: str, download: bool):
        return (*_torchvision_split(name, root, True, download), *_torchvision_split(name, root, False, download))
    return load


LOADERS = {"digits": _digits, **{n: _tv(n) for n in ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")}}
AUGMENT = {"cifar10": "crop_flip", "cifar100": "crop_flip", "svhn": "crop"}  # no flips for digits
# (channels, height, width) and classes of each data set, known before loading it
INPUT_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
                "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "svhn": ((3, 32, 32), 10)}


def noisy_labels(y: torch.Tensor, rate: float, classes: int, seed: int) -> torch.Tensor:
    """Symmetric label noise: each label, with probability `rate`, becomes a uniformly drawn *other* class."""
    if rate <= 0:
        return y.clone()
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < rate
    shift = torch.randint(1, classes, (len(y),), generator=g)  # 1..C-1: never the true class
    return torch.where(flip, (y + shift) % classes, y)


def load(name: str, data_dir: str = "~/.cache/basin/data", download: bool = False, val_fraction: float = 0.1,
         label_noise: float = 0.0, noise_seed: int = 0, augment: bool = False, num_classes: int = 0) -> Data:
    """Load `name`, hold out a validation split from train, normalise with train statistics, and put
    label noise on the remaining train labels only. `num_classes` > 0 keeps only the first classes."""
    root = os.path.expanduser(data_dir)
    tx, ty, sx, sy = LOADERS[name](root, download)
    if num_classes:
        tx, ty, sx, sy = tx[ty < num_classes], ty[ty < num_classes], sx[sy < num_classes], sy[sy < num_classes]
    classes = int(max(ty.max(), sy.max()) + 1)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(tx))
    n_val = int(round(val_fraction * len(tx)))
    val, train = order[:n_val], order[n_val:]

    x_train = torch.from_numpy(tx[train]).float() / 255
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)

    def norm(a: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(a).float() / 255 - mean) / std

    clean = torch.from_numpy(ty[train])
    noisy = noisy_labels(clean, label_noise, classes, noise_seed)
    return Data(train_x=norm(tx[train]), train_y=noisy, val_x=norm(tx[val]), val_y=torch.from_numpy(ty[val]),
                test_x=norm(sx), test_y=torch.from_numpy(sy), classes=classes,
                augment=AUGMENT.get(name, "") if augment else "",
                noise_actual=float((noisy != clean).float().mean()) if len(clean) else 0.0)


def augment_batch(x: torch.Tensor, mode: str, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding (and horizontal flip) for a whole batch at once, on x's device."""
    if not mode:
        return x
    n, _, h, w = x.shape
    dev = x.device
    shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=g, device=g.device).to(dev)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=dev)[None, :] + shifts[0][:, None])[:, None, :, None]
    cols = (torch.arange(w, device=dev)[None, :] + shifts[1][:, None])[:, None, None, :]
    batch_i = torch.arange(n, device=dev)[:, None, None, None]
    chan_i = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    out = xp[batch_i, chan_i, rows, cols]
    if mode == "crop_flip":
        flip = (torch.rand(n, generator=g, device=g.device) < 0.5).to(dev)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
