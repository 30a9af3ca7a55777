"""Data sets as tensors held on the training device (airbench style: no DataLoader, augmentation on device).

`digits` (scikit-learn, ships with the package) is the offline default; `mnist` and `fashion_mnist` read the
original idx files (gzipped or not) where they lie: in data_dir or Debian's dataset-fashion-mnist
(trainers/data_files.py says where); the other torchvision sets read their own on-disk formats from
`data_dir`; all download (through torchvision) only when asked; `tiny_imagenet` reads the official
tiny-imagenet-200/ folder.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, replace

import numpy as np
import torch

from trainers import data_files

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
    mean: torch.Tensor | None = None  # (1, C, 1, 1) train statistics the images were normalised with
    std: torch.Tensor | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device) -> Data:
        names = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "mean", "std")
        return replace(self, **{k: getattr(self, k).to(device) for k in names if getattr(self, k) is not None})

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) as the model sees them (with the train statistics)."""
        return (images.float() / 255 - self.mean) / self.std

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised inputs back to the uint8 images they came from (exact: they were uint8)."""
        return torch.round((x * self.std + self.mean) * 255).clamp(0, 255).to(torch.uint8)


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


IDX_UBYTE = 0x08  # the idx data type code of unsigned bytes, the only one MNIST-like files use


def read_idx(path: str, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with `ndim` dimensions (gzipped when its name ends in .gz), strictly:
    magic 0x0000 0x08 ndim, then ndim big-endian uint32 sizes, then exactly their product of bytes. Anything
    else is a DataError naming the file; a short file is never padded or cut to fit."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            buf = f.read()
    except (OSError, EOFError) as e:  # gzip: BadGzipFile (an OSError), or EOFError for a cut-off stream
        raise DataError(f"{path}: cannot be read: {str(e) or type(e).__name__}") from None
    if len(buf) < 4 or buf[:2] != b"\0\0":
        raise DataError(f"{path}: not an idx file (magic number {buf[:4].hex() or 'missing'}, expected "
                        f"0000{IDX_UBYTE:02x}{ndim:02x})")
    if buf[2] != IDX_UBYTE:
        raise DataError(f"{path}: idx data type 0x{buf[2]:02x}, expected 0x{IDX_UBYTE:02x} (unsigned bytes)")
    if buf[3] != ndim:
        raise DataError(f"{path}: idx file of {buf[3]} dimensions, expected {ndim}")
    start = 4 + 4 * ndim
    if len(buf) < start:
        raise DataError(f"{path}: truncated idx file: {len(buf)} bytes, shorter than its {start}-byte header")
    dims = struct.unpack(f">{ndim}I", buf[4:start])
    size = int(np.prod(dims))
    if len(buf) - start != size:
        what = "truncated idx file" if len(buf) - start < size else "idx file longer than its header says"
        raise DataError(f"{path}: {what}: {' x '.join(map(str, dims))} = {size} bytes of data expected, "
                        f"{len(buf) - start} found")
    # a writable copy: torch.from_numpy warns on read-only arrays (bytes are), and it is 47 MB at most
    return np.frombuffer(buf, np.uint8, size, start).reshape(dims).copy()


def read_idx_split(images: str, labels: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, 28, 28) uint8 images and (N,) int64 labels from one split's idx pair, checked against what the
    data set is: 28 x 28 images, one label per image, labels 0-9."""
    x, y = read_idx(images, 3), read_idx(labels, 1)
    if x.shape[1:] != (28, 28):
        raise DataError(f"{images}: images of {x.shape[1]} x {x.shape[2]}, expected 28 x 28 for dataset {name}")
    if len(y) != len(x):
        raise DataError(f"{labels}: {len(y)} labels for the {len(x)} images of {images}")
    classes = INPUT_SHAPES[name][1]
    if len(y) and int(y.max()) >= classes:
        raise DataError(f"{labels}: label {int(y.max())} out of range (dataset {name} has labels 0-{classes - 1})")
    # x[:, None] through ascontiguousarray, as torchvision's reader was read before: numpy's strides decide the
    # tensors' memory format (1-channel training images come out NHWC-strided, where CPU convolutions run
    # ~1.5x faster), so this keeps both the speed and the numbers of earlier MNIST trials
    return np.ascontiguousarray(x[:, None]), y.astype(np.int64)


def _idx(name: str):
    """Loader of MNIST or Fashion-MNIST from the idx files data_files.find_idx finds (the same rule that
    `basin validate` checks); torchvision is used only to download them, into <data_dir>/<Name>/raw/,
    which find_idx then finds."""
    def load(root: str, download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        paths = data_files.find_idx(name, root)
        if paths is None and download:
            _torchvision_split(name, root, True, True)  # downloads all four files (or raises "download failed")
            paths = data_files.find_idx(name, root)
        if paths is None:
            raise DataError(data_files.idx_missing(name, root))
        train = read_idx_split(paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"], name)
        test = read_idx_split(paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"], name)
        return (*train, *test)
    return load


def tiny_imagenet_wnids(root: str) -> list[str]:
    """Tiny ImageNet's class ids in class-index order (sorted, as torchvision's ImageFolder orders them)."""
    path = os.path.join(root, "tiny-imagenet-200", "wnids.txt")
    if not os.path.isfile(path):
        raise DataError(f"dataset tiny_imagenet: {path} not found (expected the tiny-imagenet-200/ folder of "
                        f"the official zip under data_dir)")
    with open(path) as f:
        return sorted(line.strip() for line in f if line.strip())


def read_images(paths: list[str], side: int) -> np.ndarray:
    """(N, 3, side, side) uint8 from image files (grey ones converted to RGB); the size is checked."""
    from PIL import Image

    out = np.empty((len(paths), 3, side, side), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (side, side, 3):
            raise DataError(f"{p}: expected a {side}x{side} image, got {a.shape[1]}x{a.shape[0]}")
        out[i] = a.transpose(2, 0, 1)
    return out


def _tiny_imagenet(root: str, download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The tiny-imagenet-200/ layout: train/<wnid>/images/*.JPEG, val/images/*.JPEG labelled by
    val/val_annotations.txt (file, wnid, box); 64 x 64, 200 classes. Its val split is the test set (the
    official test split has no labels; Tiny-ImageNet-C corrupts the val images)."""
    if download:
        raise DataError("dataset tiny_imagenet: no download (unpack the official zip into data_dir)")
    wnids = tiny_imagenet_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    base = os.path.join(root, "tiny-imagenet-200")
    paths, labels = [], []
    for w in wnids:
        folder = os.path.join(base, "train", w, "images")
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpeg", ".jpg"))) \
            if os.path.isdir(folder) else []
        if not files:
            raise DataError(f"dataset tiny_imagenet: {folder}: expected the class's training images (*.JPEG)")
        paths += [os.path.join(folder, f) for f in files]
        labels += [index[w]] * len(files)
    notes = os.path.join(base, "val", "val_annotations.txt")
    if not os.path.isfile(notes):
        raise DataError(f"dataset tiny_imagenet: {notes} not found (expected the val labels)")
    val_paths, val_labels = [], []
    with open(notes) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                val_paths.append(os.path.join(base, "val", "images", parts[0]))
                val_labels.append(index[parts[1]])
    return (read_images(paths, 64), np.array(labels, dtype=np.int64), read_images(val_paths, 64),
            np.array(val_labels, dtype=np.int64))


def _synthetic_cifar10(root: str, download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random CIFAR-10-shaped images and labels (50,000 train, 10,000 test, 3 x 32 x 32, 10 classes), the
    same every time: for throughput benchmarks and GPU checks where the real files are not at hand. Nothing
    in it can be learned beyond chance."""
    rng = np.random.default_rng(SPLIT_SEED)
    x = rng.integers(0, 256, (60_000, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 60_000)
    return x[:50_000], y[:50_000], x[50_000:], y[50_000:]


def _tv(name: str):
    def load(root: str, download: bool):
        return (*_torchvision_split(name, root, True, download), *_torchvision_split(name, root, False, download))
    return load


LOADERS = {"digits": _digits, "mnist": _idx("mnist"), "fashion_mnist": _idx("fashion_mnist"),
           **{n: _tv(n) for n in ("cifar10", "cifar100", "svhn")},
           "tiny_imagenet": _tiny_imagenet, "synthetic_cifar10": _synthetic_cifar10}
AUGMENT = {"cifar10": "crop_flip", "cifar100": "crop_flip", "svhn": "crop",  # no flips for digits
           "tiny_imagenet": "crop_flip", "synthetic_cifar10": "crop_flip"}
# (channels, height, width) and classes of each data set, known before loading it
INPUT_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
                "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "svhn": ((3, 32, 32), 10),
                "tiny_imagenet": ((3, 64, 64), 200), "synthetic_cifar10": ((3, 32, 32), 10)}
# Images in each data set's splits (the training count is also the most a trial keeps on its device: the
# packing check). Kept in data_files, which imports no torch, so config checks can use them too.
TRAIN_SIZES, TEST_SIZES = data_files.TRAIN_SIZES, data_files.TEST_SIZES


def noisy_labels(y: torch.Tensor, rate: float, classes: int, seed: int) -> torch.Tensor:
    """Symmetric label noise: each label, with probability `rate`, becomes a uniformly drawn *other* class."""
    if rate <= 0:
        return y.clone()
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < rate
    shift = torch.randint(1, classes, (len(y),), generator=g)  # 1..C-1: never the true class
    return torch.where(flip, (y + shift) % classes, y)


def stratified_subset(y: np.ndarray, n: int, seed: int | tuple[int, ...]) -> np.ndarray:
    """Sorted indices of `n` of the labels `y`, each class's count within 1 of its share of n (n x its
    fraction of y, rounded down, plus one for the classes with the largest remainders, ties drawn at random),
    the examples of each class drawn uniformly. The same (y, n, seed) gives the same indices."""
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y, return_counts=True)
    quota = n * counts / len(y)
    take = np.floor(quota).astype(np.int64)
    extra = n - int(take.sum())
    ties = rng.random(len(labels))
    take[np.lexsort((ties, -(quota - take)))[:extra]] += 1  # largest remainder first
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(labels, take, strict=True)]
    return np.sort(np.concatenate(picked))


def _subset(y: np.ndarray, n: int, field: str, name: str, split: str, classes: int, stream: int) -> np.ndarray:
    """Indices of a stratified subset of n of the labels y (0 = all of them, in order), or a DataError naming
    the field and the split's size."""
    if not n:
        return np.arange(len(y))
    if not classes <= n <= len(y):
        raise DataError(f"{field}: expected 0 (all) or {classes} to {len(y)} (the {split} images of dataset "
                        f"{name}, {classes} classes), got {n}")
    # Drawn from SPLIT_SEED, the seed of the validation split: like that split, the subset is a fact of the
    # study, the same for every trial (whatever its seed or noise_seed), so seeds and methods are compared on
    # the same images. `stream` keeps the train and test draws apart from each other and from the split.
    return stratified_subset(y, n, seed=(SPLIT_SEED, stream))


def load(name: str, data_dir: str = "~/.cache/basin/data", download: bool = False, val_fraction: float = 0.1,
         label_noise: float = 0.0, noise_seed: int = 0, augment: bool = False, num_classes: int = 0,
         train_size: int = 0, test_size: int = 0) -> Data:
    """Load `name`, hold out a validation split from train, normalise with train statistics, and put
    label noise on the remaining train labels only. `num_classes` > 0 keeps only the first classes;
    `train_size` / `test_size` > 0 keep a class-stratified subset of that many images of the training file
    (before the validation split, which then comes out of the subset, and before label noise) / test file."""
    root = os.path.expanduser(data_dir)
    tx, ty, sx, sy = LOADERS[name](root, download)
    if num_classes:
        tx, ty, sx, sy = tx[ty < num_classes], ty[ty < num_classes], sx[sy < num_classes], sy[sy < num_classes]
    classes = int(max(ty.max(), sy.max()) + 1)  # before the subsets: a class they miss still has its output
    keep = _subset(ty, train_size, "train_size", name, "training", classes, stream=1)
    if test_size:
        sx, sy = (a[_subset(sy, test_size, "test_size", name, "test", classes, stream=2)] for a in (sx, sy))
    # The split indexes the subset (keep[...]): one numpy gather from the file's arrays, as without a subset,
    # so the images' memory format (numpy's strides, see read_idx_split) does not depend on train_size.
    order = np.random.default_rng(SPLIT_SEED).permutation(len(keep))
    n_val = int(round(val_fraction * len(keep)))
    val, train = keep[order[:n_val]], keep[order[n_val:]]

    x_train = torch.from_numpy(tx[train]).float().div_(255)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)

    def norm(a: np.ndarray | torch.Tensor) -> torch.Tensor:
        # in place on a fresh float copy (the same operations, in the same order, as (a / 255 - mean) / std):
        # on 60,000 MNIST images three out-of-place passes took most of a load's time
        x = a if isinstance(a, torch.Tensor) else torch.from_numpy(a).float().div_(255)
        return x.sub_(mean).div_(std)

    clean = Data(train_x=norm(x_train), train_y=torch.from_numpy(ty[train]), val_x=norm(tx[val]),
                 val_y=torch.from_numpy(ty[val]), test_x=norm(sx), test_y=torch.from_numpy(sy), classes=classes,
                 augment=AUGMENT.get(name, "") if augment else "", mean=mean, std=std)
    return with_noise(clean, label_noise, noise_seed)


def rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] for a 1-D index of the first dimension, gathered with index_select (half the time of t[idx] on
    CPU: a Fashion-MNIST MLP epoch ran 6% faster) into the memory format of t (index_select alone would
    return NCHW strides, and 1-channel NHWC-strided images would lose the faster CPU convolutions)."""
    return torch.index_select(t, 0, idx, out=torch.empty_like(t[:len(idx)]))


def with_noise(clean: Data, rate: float, seed: int) -> Data:
    """`clean` with symmetric noise on its train labels (drawn on the CPU, so the labels do not depend on
    the device): trials that share the data but not the noise (packed trials) load the data once."""
    y = clean.train_y.cpu()
    noisy = noisy_labels(y, rate, clean.classes, seed)
    return replace(clean, train_y=noisy.to(clean.train_y.device),
                   noise_actual=float((noisy != y).float().mean()) if len(y) else 0.0)


def augment_batch(x: torch.Tensor, mode: str, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding (and horizontal flip) for a whole batch at once, on x's device."""
    return augment_many(x, mode, [g], pad)


def augment_many(x: torch.Tensor, mode: str, gens: list[torch.Generator], pad: int = 4) -> torch.Tensor:
    """augment_batch for the batches of several trials stacked in x (len(gens) equal parts), each drawing its
    crops and flips from its own generator, in augment_batch's order, so each part equals augment_batch of
    that part; the crop itself is one gather for all of them (packed trials)."""
    if not mode:
        return x
    n, _, h, w = x.shape
    dev = x.device
    per = n // len(gens)
    parts, flips = [], []
    for g in gens:  # each generator draws in augment_batch's order: its shifts, then its flips
        parts.append(torch.randint(0, 2 * pad + 1, (2, per), generator=g, device=g.device).to(dev))
        if mode == "crop_flip":
            flips.append((torch.rand(per, generator=g, device=g.device) < 0.5).to(dev))
    shifts = torch.cat(parts, 1)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=dev)[None, :] + shifts[0][:, None])[:, None, :, None]
    cols = (torch.arange(w, device=dev)[None, :] + shifts[1][:, None])[:, None, None, :]
    batch_i = torch.arange(n, device=dev)[:, None, None, None]
    chan_i = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    out = xp[batch_i, chan_i, rows, cols]
    if flips:
        flip = torch.cat(flips)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
