"""Corrupted test sets for the final evaluation: generated on the device (trainers/corruptions.py) or read from
the published -C releases under `corruption_dir`.

`for_trial(cfg, data)` checks everything it will need before training starts (a missing or malformed file is
one DataError line naming the path and what was expected) and returns a `CorruptedSets`: a read-only mapping
from (corruption, severity) to the normalised test inputs, built one set at a time when it is read, so a point
is placed once (BatchNorm from clean training data) and then sees every set without all of them in memory.

Published layouts (as the releases unpack):
    CIFAR-10-C/<corruption>.npy, labels.npy      (and CIFAR-100-C/): uint8 (5 N, 32, 32, 3), severity s is
                                                 rows (s - 1) N ... s N - 1; labels (5 N,)
    mnist_c/<corruption>/test_images.npy          uint8 (N, 28, 28, 1); test_labels.npy (N,); one level (0)
    Tiny-ImageNet-C/<corruption>/<s>/<wnid>/*.JPEG 64 x 64; classes by tiny-imagenet-200/wnids.txt in data_dir
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from trainers import corruption_params
from trainers.config import TrialConfig, corruption_list, severity_list
from trainers.corruptions import corrupt, generator_for
from trainers.data import Data, DataError, read_images, tiny_imagenet_wnids

Key = tuple[str, int]   # (corruption, severity)
KEEP_BYTES = 1 << 30    # uint8 sets kept between the points of a trial (the rest are made or read again)


@dataclass(eq=False)
class CorruptedSets(Mapping):
    """(corruption, severity) -> normalised test inputs on the data's device; `labels(key)` their labels."""

    data: Data
    keys_: list[Key]
    load: object                          # key -> (uint8 images (N, C, H, W) on the device, labels)
    record: str = ""                      # what trials store in `corruption_generator`
    _labels: dict[Key, torch.Tensor] = field(default_factory=dict)
    _kept: dict[Key, torch.Tensor] = field(default_factory=dict)  # uint8 sets kept for the next point

    def __getitem__(self, key: Key) -> torch.Tensor:
        images = self._kept.get(key)
        if images is None:
            images, self._labels[key] = self.load(key)
            if sum(x.numel() for x in self._kept.values()) + images.numel() <= KEEP_BYTES:
                self._kept[key] = images
        return self.data.normalise(images)

    def labels(self, key: Key) -> torch.Tensor:
        if key not in self._labels:
            self[key]
        return self._labels[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


def for_trial(cfg: TrialConfig, d: Data) -> CorruptedSets | None:
    """The trial's corrupted test sets (None when it evaluates none), checked before any training."""
    names = corruption_list(cfg)
    if not names:
        return None
    severities = severity_list(cfg)
    if cfg.corruption_source == "generated":
        return generated(d, names, severities, cfg.corruption_seed)
    root = os.path.expanduser(cfg.corruption_dir or cfg.data_dir)
    reader = {"mnist": MnistC, "tiny_imagenet": TinyImageNetC}.get(cfg.dataset, CifarC)
    return reader(root, cfg, d).sets(names, severities)


def generated(d: Data, names: list[str], severities: list[int], seed: int) -> CorruptedSets:
    clean = d.raw(d.test_x)
    side = clean.shape[-1]
    if clean.shape[-2] != side or side not in corruption_params.TABLES:
        raise DataError(f"corruptions: generated corruptions have parameters for square images of "
                        f"{sorted(corruption_params.TABLES)} px, this data set has {tuple(clean.shape[-2:])}")

    def load(key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        name, severity = key
        return corrupt(clean, name, severity, generator_for(seed, name, severity, clean.device)), d.test_y

    return CorruptedSets(d, [(n, s) for n in names for s in severities], load,
                         corruption_params.record(side, names, severities))


class _Reader:
    folder = ""

    def __init__(self, root: str, cfg: TrialConfig, d: Data):
        self.base = os.path.join(root, corruption_params.PUBLISHED[cfg.dataset])
        self.cfg, self.data = cfg, d
        c, h, w = d.in_shape
        self.shape = (h, w, c)

    def fail(self, path: str, expected: str, got: str = "") -> DataError:
        return DataError(f"corruption_dir: {path}: expected {expected}" + (f", {got}" if got else ""))

    def array(self, path: str, expected: str) -> np.ndarray:
        if not os.path.isfile(path):
            raise self.fail(path, expected, "not found")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise self.fail(path, expected, f"not a .npy array ({e})") from None

    def to_device(self, images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.data.test_x.device
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()  # a copy: files are mapped
        return x.to(dev), torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(dev)

    def sets(self, names: list[str], severities: list[int]) -> CorruptedSets:
        raise NotImplementedError


class CifarC(_Reader):
    """CIFAR-10-C / CIFAR-100-C: one array of the 5 severities per corruption, one labels array."""

    def sets(self, names: list[str], severities: list[int]) -> CorruptedSets:
        h, w, c = self.shape
        what = f"a uint8 array of 5 x N images of {h}x{w}x{c} (N per severity)"
        labels = self.array(os.path.join(self.base, "labels.npy"), "the labels of 5 x N images (labels.npy)")
        arrays = {}
        for n in names:
            path = os.path.join(self.base, f"{n}.npy")
            a = self.array(path, what)
            if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1:] != self.shape or len(a) % 5:
                raise self.fail(path, what, f"got {a.dtype} {tuple(a.shape)}")
            if len(labels) != len(a) or labels.ndim != 1:
                raise self.fail(os.path.join(self.base, "labels.npy"), f"{len(a)} labels (one per image of {n}.npy)",
                                f"got shape {tuple(labels.shape)}")
            arrays[n] = a
        if labels.size and int(labels.max()) >= self.data.classes:
            raise self.fail(os.path.join(self.base, "labels.npy"), f"labels below {self.data.classes}",
                            f"got {int(labels.max())}")

        def load(key: Key) -> tuple[torch.Tensor, torch.Tensor]:
            name, s = key
            a = arrays[name]
            per = len(a) // 5
            return self.to_device(a[(s - 1) * per:s * per], labels[(s - 1) * per:s * per])

        return CorruptedSets(self.data, [(n, s) for n in names for s in severities], load,
                             f'{{"published": "{os.path.basename(self.base)}"}}')


class MnistC(_Reader):
    """MNIST-C: a folder per corruption with test_images.npy and test_labels.npy, one level (severity 0)."""

    def sets(self, names: list[str], severities: list[int]) -> CorruptedSets:
        what = "a uint8 array of N images of 28x28 (x1)"
        arrays = {}
        for n in names:
            folder = os.path.join(self.base, n)
            x = self.array(os.path.join(folder, "test_images.npy"), what)
            y = self.array(os.path.join(folder, "test_labels.npy"), "N labels (test_labels.npy)")
            if x.dtype != np.uint8 or x.shape[1:] not in ((28, 28, 1), (28, 28)):
                raise self.fail(os.path.join(folder, "test_images.npy"), what, f"got {x.dtype} {tuple(x.shape)}")
            if y.shape != (len(x),):
                raise self.fail(os.path.join(folder, "test_labels.npy"), f"{len(x)} labels",
                                f"got shape {tuple(y.shape)}")
            arrays[n] = (x.reshape(len(x), 28, 28, 1), y)

        def load(key: Key) -> tuple[torch.Tensor, torch.Tensor]:
            return self.to_device(*arrays[key[0]])

        return CorruptedSets(self.data, [(n, 0) for n in names], load, '{"published": "mnist_c"}')


class TinyImageNetC(_Reader):
    """Tiny-ImageNet-C: <corruption>/<severity>/<wnid>/*.JPEG, classes named by the training set's wnids."""

    def sets(self, names: list[str], severities: list[int]) -> CorruptedSets:
        index = {w: i for i, w in enumerate(tiny_imagenet_wnids(os.path.expanduser(self.cfg.data_dir)))}
        files: dict[Key, tuple[list[str], list[int]]] = {}
        for n in names:
            for s in severities:
                folder = os.path.join(self.base, n, str(s))
                if not os.path.isdir(folder):
                    raise self.fail(folder, "a folder of class folders (<wnid>/*.JPEG)", "not found")
                paths, labels = [], []
                for w in sorted(os.listdir(folder)):
                    if w not in index:
                        raise self.fail(os.path.join(folder, w), "a class folder named by a wnid of wnids.txt")
                    imgs = sorted(f for f in os.listdir(os.path.join(folder, w))
                                  if f.lower().endswith((".jpeg", ".jpg")))
                    paths += [os.path.join(folder, w, f) for f in imgs]
                    labels += [index[w]] * len(imgs)
                if not paths:
                    raise self.fail(folder, "64x64 images in <wnid>/ folders", "found none")
                read_images(paths[:1], 64)  # the size, checked now rather than after training
                files[(n, s)] = (paths, labels)

        def load(key: Key) -> tuple[torch.Tensor, torch.Tensor]:
            paths, labels = files[key]
            return self.to_device(read_images(paths, 64).transpose(0, 2, 3, 1), np.array(labels))

        return CorruptedSets(self.data, list(files), load, '{"published": "Tiny-ImageNet-C"}')
