"""Corruptions: the generated ones (shape, dtype, range, change, growth with severity, seeding, the reference
parameters, PIL agreement), the published -C readers on files written here in their layouts, and the
evaluation rows and report section of real (tiny) trials."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kornia.metrics import ssim
from PIL import Image
from sklearn.datasets import load_digits
from test_data import write_cifar, write_mnist

from analysis.report import build_report
from trainers import corruption_params as P
from trainers.config import ConfigError, make_config
from trainers.corruptions import CORRUPTIONS, corrupt, generator_for, jpeg
from trainers.data import DataError
from trainers.results import FolderSink
from trainers.train import run_trial

# Where a reference table is not ordered by image distance (so neither is a faithful copy of it):
# elastic trades a large affine warp at severity 1 for small local displacements later (CIFAR-10-C,
# Tiny-ImageNet-C, MNIST-C); glass blur's first severity barely blurs its shuffled pixels (CIFAR, Tiny
# ImageNet); MNIST-C's pixelate goes through 16 px then 14 px (an exact half, which aliases less); MNIST-C's
# snow (ImageNet-C's table) raises the flake threshold from 0.5 to 0.9 at severity 3: fewer flakes than at 2.
NOT_ORDERED = {(32, "elastic_transform"), (64, "elastic_transform"), (28, "elastic_transform"),
               (32, "glass_blur"), (64, "glass_blur"), (28, "pixelate"), (28, "snow")}


def images(side: int, channels: int, n: int = 16) -> torch.Tensor:
    """Real digits, resized to `side` and (for colour) painted in random foreground/background colours."""
    x = torch.from_numpy(load_digits().images[:n]).float()[:, None] / 16
    if side != 8:
        x = torch.nn.functional.interpolate(x, size=side, mode="bilinear", align_corners=False)
    if channels == 3:
        g = torch.Generator().manual_seed(1)
        x = x * torch.rand(n, 3, 1, 1, generator=g) + (1 - x) * torch.rand(n, 3, 1, 1, generator=g)
    return (x * 255).round().to(torch.uint8)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - SSIM (kornia), mean over images: structure, contrast and brightness changes all count."""
    window = 3 if a.shape[-1] == 8 else 7
    return float(1 - ssim(a.float() / 255, b.float() / 255, window).mean())


@pytest.mark.parametrize("side,channels", [(8, 1), (28, 1), (32, 3), (64, 3)])
def test_generated_corruptions_keep_shape_dtype_range_and_grow_with_severity(side, channels):
    x = images(side, channels, n=16 if side < 64 else 8)
    for name in CORRUPTIONS:
        d = []
        for s in (1, 2, 3, 4, 5):  # the same draws at every severity: only the parameters differ
            y = corrupt(x, name, s, torch.Generator().manual_seed(0))
            assert y.shape == x.shape and y.dtype == torch.uint8, (name, s)
            assert (y != x).any(), (name, s, "left the images unchanged")
            d.append(distance(x, y))
            if s == 3:  # a float batch in [0, 1] gives the same images, as floats in [0, 1]
                f = corrupt(x.float() / 255, name, s, torch.Generator().manual_seed(0))
                assert f.dtype == torch.float32 and float(f.min()) >= 0 and float(f.max()) <= 1
                assert torch.allclose(f * 255, y.float(), atol=1e-3), name
        if (side, name) in NOT_ORDERED:
            continue
        assert d[4] > 1.2 * d[0], (side, name, d)
        assert all(b >= 0.95 * a for a, b in zip(d, d[1:], strict=False)), (side, name, d)  # rises, within 5%


def test_same_seed_gives_the_same_images_on_cpu():
    x = images(32, 3, n=8)
    for name in CORRUPTIONS:
        a = corrupt(x, name, 4, generator_for(7, name, 4))
        b = corrupt(x, name, 4, generator_for(7, name, 4))
        assert torch.equal(a, b), name
    random = [n for n in CORRUPTIONS if n not in ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                                                   "jpeg_compression")]
    for name in random:
        assert not torch.equal(corrupt(x, name, 4, generator_for(7, name, 4)),
                               corrupt(x, name, 4, generator_for(8, name, 4))), name


# make_cifar_c.py (hendrycks/robustness, ImageNet-C/create_c), the values as published there.
CIFAR_10_C = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [.05, .1, .15, .2, .3],
    "contrast": [.75, .5, .4, .3, 0.15],
    "elastic_transform": [(0, 0, 2.56), (1.6, 6.4, 2.24), (2.56, 1.92, 1.92), (3.2, 1.28, 1.6), (3.2, 0.96, 0.96)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}


def test_32px_parameters_are_the_cifar_10_c_generators():
    for name, values in CIFAR_10_C.items():
        for s, ref in enumerate(values, start=1):
            got = P.params(32, name, s)
            if name == "zoom_blur":  # basin stores (stop, step) of the same np.arange
                got = np.arange(1, got[0], got[1])
            elif name == "glass_blur":
                assert got[3] == 1.0  # every pixel visited (MNIST-C visits half)
                got = got[:3]
            np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(ref, dtype=float), rtol=1e-9,
                                       err_msg=f"{name} severity {s}")
    assert P.TABLES[32]["layout"] == {"plasma": 32, "frost_scale": 0.2, "overlay": 32, "glass": "copy"}


def test_pixelate_and_jpeg_agree_with_pil():
    x = images(32, 3, n=8)
    for s, fraction in enumerate(CIFAR_10_C["pixelate"], start=1):
        ours = corrupt(x, "pixelate", s, generator_for(0, "pixelate", s)).int()
        small = int(32 * fraction)
        ref = torch.stack([torch.from_numpy(np.array(Image.fromarray(im.permute(1, 2, 0).numpy())
                                                     .resize((small, small), Image.BOX).resize((32, 32), Image.BOX)))
                           .permute(2, 0, 1) for im in x]).int()
        assert (ours - ref).abs().max() <= 1, s  # PIL rounds, the reference's uint8 cast truncates
    for q in (80, 40):
        ours = jpeg(x.float() / 255, q) * 255
        ref = []
        for im in x:
            buf = io.BytesIO()
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=q)
            ref.append(torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1))
        ref = torch.stack(ref).float()
        assert float((ours - ref).abs().mean()) < 1.5, q               # libjpeg's integer DCT differs slightly
        assert float((ours - ref).abs().mean()) < 0.6 * float((ref - x.float()).abs().mean())


def test_config_checks_name_the_field():
    for bad, field in [({"corruptions": "snowstorm"}, "corruptions"), ({"corruption_severities": "0,6"},
                                                                        "corruption_severities"),
                       ({"corruptions": "all", "corruption_source": "published"}, "corruption_source")]:
        with pytest.raises(ConfigError, match=f"^{field}: expected"):
            make_config(bad)
    assert make_config({"dataset": "mnist", "corruption_source": "published", "corruptions": "shear"})


# -- published sets ---------------------------------------------------------------------------------------
def write_cifar_c(root: Path, names: list[str], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    arrays = {name: rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8) for name in names}
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a)
    np.save(folder / "labels.npy", np.tile(rng.integers(0, 10, n), 5).astype(np.uint8))
    return arrays


def trial(root: Path, **kw) -> dict:
    cfg = make_config({"dataset": "cifar10", "data_dir": str(root), "model": "mlp", "width": 2, "epochs": 1,
                       "warmup_epochs": 0, "batch_size": 8, "val_fraction": 0.0, "eval_every": 0,
                       "alpha_grid": 2, "ensemble_samples": 0, "checkpoint_every": 0, "device": "cpu", **kw})
    return run_trial(cfg)


def test_cifar_10_c_reader_gives_each_severity_its_rows(tmp_path):
    write_cifar(tmp_path, 10)
    arrays = write_cifar_c(tmp_path, ["snow", "fog"], n=12)
    out = trial(tmp_path, shape="point", corruption_source="published", corruptions="snow,fog",
                corruption_severities="2,5")
    rows = [e for e in out["evals"] if e["corruption"]]
    assert sorted((e["corruption"], e["severity"]) for e in rows) == [("fog", 2), ("fog", 5), ("snow", 2),
                                                                      ("snow", 5)]
    assert '"published": "CIFAR-10-C"' in out["trials"][0]["corruption_generator"]
    # the reader's severity-2 block is rows 12..23 of the file
    from trainers.corruption_sets import for_trial
    from trainers.data import load
    cfg = make_config({"dataset": "cifar10", "data_dir": str(tmp_path), "corruption_source": "published",
                       "corruptions": "snow", "corruption_severities": "2"})
    d = load("cifar10", str(tmp_path))
    sets = for_trial(cfg, d)
    assert torch.equal(d.raw(sets[("snow", 2)]), torch.from_numpy(arrays["snow"][12:24]).permute(0, 3, 1, 2))


def test_missing_or_malformed_c_folder_fails_before_training(tmp_path):
    write_cifar(tmp_path, 10)
    with pytest.raises(DataError, match=r"^corruption_dir: .*CIFAR-10-C/labels.npy: expected .* not found$"):
        trial(tmp_path, corruption_source="published", corruptions="snow")
    write_cifar_c(tmp_path, ["snow"], n=3)
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.zeros((15, 28, 28, 3), np.uint8))
    with pytest.raises(DataError, match=r"^corruption_dir: .*fog.npy: expected a uint8 array of 5 x N images of "
                                        r"32x32x3 \(N per severity\), got uint8 \(15, 28, 28, 3\)$"):
        trial(tmp_path, corruption_source="published", corruptions="snow,fog")


def test_mnist_c_reader(tmp_path):
    write_mnist(tmp_path, "MNIST")
    rng = np.random.default_rng(0)
    for name in ("shear", "fog"):
        folder = tmp_path / "mnist_c" / name
        folder.mkdir(parents=True)
        np.save(folder / "test_images.npy", rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8))
        np.save(folder / "test_labels.npy", rng.integers(0, 10, 20).astype(np.uint8))
    cfg = make_config({"dataset": "mnist", "data_dir": str(tmp_path), "model": "mlp", "width": 2, "epochs": 1,
                       "warmup_epochs": 0, "batch_size": 8, "val_fraction": 0.0, "eval_every": 0,
                       "shape": "point", "corruption_source": "published", "corruptions": "shear,fog",
                       "checkpoint_every": 0})
    rows = [e for e in run_trial(cfg)["evals"] if e["corruption"]]
    assert sorted((e["corruption"], e["severity"]) for e in rows) == [("fog", 0), ("shear", 0)]


def write_tiny_imagenet(root: Path, wnids: list[str], per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # the file's order is not the index
    notes = []
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                base / "train" / w / "images" / f"{w}_{i}.JPEG")
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(  # grey images exist too
                base / "val" / "images" / f"val_{w}_{i}.JPEG")
            notes.append(f"val_{w}_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")


def test_tiny_imagenet_and_tiny_imagenet_c(tmp_path):
    wnids = ["n01443537", "n01629819", "n01641577"]
    write_tiny_imagenet(tmp_path, wnids)
    from trainers.data import load
    d = load("tiny_imagenet", str(tmp_path), val_fraction=0.0)
    assert d.in_shape == (3, 64, 64) and len(d.train_y) == 9 and len(d.test_y) == 9
    assert sorted(d.test_y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    rng = np.random.default_rng(1)
    for s in (1, 3):
        for w in wnids[1:]:
            folder = tmp_path / "c" / "Tiny-ImageNet-C" / "snow" / str(s) / w
            folder.mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{k}.JPEG")
    from trainers.corruption_sets import for_trial
    cfg = make_config({"dataset": "tiny_imagenet", "data_dir": str(tmp_path), "corruption_dir": str(tmp_path / "c"),
                       "corruption_source": "published", "corruptions": "snow", "corruption_severities": "1,3"})
    sets = for_trial(cfg, d)
    assert list(sets) == [("snow", 1), ("snow", 3)]
    assert sets[("snow", 3)].shape == (4, 3, 64, 64) and sets.labels(("snow", 3)).tolist() == [1, 1, 2, 2]
    cfg = make_config({**cfg.to_dict(), "corruption_severities": "1,2", "preset": ""})
    with pytest.raises(DataError, match=r"^corruption_dir: .*Tiny-ImageNet-C/snow/2: expected a folder"):
        for_trial(cfg, d)


# -- evaluation rows and the report -----------------------------------------------------------------------
def test_trials_write_corruption_rows_and_the_report_shows_them(tmp_path):
    root = tmp_path / "results"
    base = dict(dataset="digits", model="mlp", width=4, epochs=2, warmup_epochs=0, alpha_grid=3, ensemble_samples=0,
                checkpoint_every=0, device="cpu", corruptions="snow,contrast", corruption_severities="1,3")
    for c in (dict(shape="point", seed=0), dict(shape="point", seed=1), dict(shape="line", seed=0),
              dict(shape="line", seed=1)):
        cfg = make_config({**base, **c})
        run_trial(cfg, FolderSink(root, sweep="tiny", trial_key=cfg.key()))
    import analysis
    r = analysis.load(str(root))
    ev = r.evals[r.evals["corruption"] != ""]
    line = r.trials[r.trials["shape"] == "line"]["trial_key"]
    got = set(zip(ev["point"], ev["corruption"], ev["severity"], strict=True))
    assert {("center", "snow", 3), ("endpoint_1", "contrast", 1), ("ensemble_endpoints", "snow", 1),
            ("point", "contrast", 3)} <= got
    assert set(ev[ev["trial_key"].isin(line)]["point"]) == {"center", "endpoint_0", "endpoint_1", "ensemble_endpoints"}
    assert (r.trials["corruption_generator"].str.contains(P.GENERATOR)).all()
    out = tmp_path / "report"
    (rep,) = build_report(str(root), out)
    table = rep.get("corruptions", "table")
    md = (out / "tiny" / "tables" / "corruptions.md").read_text()
    assert "snow-1" in md and "contrast-3" in md and "Line · ensemble_endpoints" in md
    data = pd.read_csv(out / "tiny" / "tables" / "corruptions.csv")
    point = data["series"] == "Standard · point"
    cell = data[point & (data["corruption"] == "snow") & (data["severity"] == 3)]
    snow3 = ev[(ev["point"] == "point") & (ev["corruption"] == "snow") & (ev["severity"] == 3)]["accuracy"]
    assert cell["accuracy_mean"].item() == pytest.approx(snow3.mean()) and cell["seeds"].item() == 2
    assert table.table.views[0].cells.shape[0] == 3  # point, line centre, line ensemble
    assert (out / "tiny" / "figures" / "corruption_severity.png").stat().st_size > 10_000
