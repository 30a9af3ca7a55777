"""Parameters of the generated corruptions, as data (no torch: config validation and analysis read them).

One table per image side, each row the five severities of one corruption:

- 32 px: CIFAR-10-C, Hendrycks & Dietterich's generator (hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py);
- 64 px: Tiny-ImageNet-C, the same repository's make_tinyimagenet_c.py;
- 28 px: MNIST-C (google-research/mnist-c, corruptions.py), which sets ImageNet-C-like values for every corruption;
- 8 px (scikit-learn's digits): basin's own set, since no standard exists (docs/corruptions.md says how it was
  derived: MNIST-C's intensities, lengths scaled by 8/28, overlays drawn at 28 px and shrunk).

Lengths are in pixels of the image the table is for. `GENERATOR` names this implementation; it changes whenever a
change here or in trainers/corruptions.py changes the images, so results made with different generators are
never silently pooled (trials record it in `corruption_generator`).
"""

from __future__ import annotations

import json
from typing import Any

GENERATOR = "basin-corruptions/1"

# The 15 corruptions of Hendrycks & Dietterich's benchmark, in their order: noise, blur, weather, digital.
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)

# What each entry holds (per severity):
#   gaussian_noise     sigma of the additive noise
#   shot_noise         photons at full intensity (Poisson rate = x * value)
#   impulse_noise      fraction of values set to 0 or 1 (half each)
#   defocus_blur       (disk radius, sigma of the 3x3 Gaussian that antialiases the disk)
#   glass_blur         (Gaussian sigma, largest pixel shift, passes, probability that a pixel is swapped)
#   motion_blur        (kernel radius, sigma of the one-sided Gaussian along the motion)
#   zoom_blur          (largest zoom (exclusive), step): the image averaged with its zooms 1, 1 + step, ...
#   snow               (mean, std of the flake noise, zoom of the flake layer, threshold, motion radius,
#                       motion sigma, share of the image kept before whitening)
#   frost              (weight of the image, weight of the frost texture)
#   fog                (fog amount, decay of the plasma fractal per octave)
#   brightness         added to the HSV value
#   contrast           factor on the distance to the per-channel mean
#   elastic_transform  (displacement alpha, displacement smoothing sigma, affine jitter), all in pixels
#   pixelate           side of the box-downsampled image, as a fraction of the side
#   jpeg_compression   JPEG quality
# `layout` per table: plasma fractal size for fog (the map is cropped to the image), frost texture scale
# (1 = the texture at its native scale), the side at which the overlays (snow, frost, fog) are drawn before
# they are resized to the image, and whether glass blur copies or swaps pixels (see corruptions.glass_blur).
_CIFAR = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1, 1.0), (0.25, 1, 1, 1.0), (0.4, 1, 1, 1.0), (0.25, 1, 2, 1.0), (0.4, 1, 2, 1.0)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [(32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07),
                          (32 * 0.08, 32 * 0.06, 32 * 0.06), (32 * 0.1, 32 * 0.04, 32 * 0.05),
                          (32 * 0.1, 32 * 0.03, 32 * 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "layout": {"plasma": 32, "frost_scale": 0.2, "overlay": 32, "glass": "copy"},
}
_TINY_IMAGENET = {
    "gaussian_noise": [0.04, 0.08, 0.12, 0.15, 0.18],
    "shot_noise": [250, 100, 50, 30, 15],
    "impulse_noise": [0.01, 0.02, 0.05, 0.08, 0.14],
    "defocus_blur": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
    "glass_blur": [(0.1, 1, 1, 1.0), (0.5, 1, 1, 1.0), (0.6, 1, 2, 1.0), (0.7, 2, 1, 1.0), (0.9, 2, 2, 1.0)],
    "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
    "zoom_blur": [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
    "frost": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
    "fog": [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "elastic_transform": [(64 * 0, 64 * 0, 64 * 0.08), (64 * 0.05, 64 * 0.3, 64 * 0.06),
                          (64 * 0.1, 64 * 0.08, 64 * 0.06), (64 * 0.1, 64 * 0.03, 64 * 0.03),
                          (64 * 0.16, 64 * 0.03, 64 * 0.02)],
    "pixelate": [0.9, 0.8, 0.7, 0.6, 0.5],
    "jpeg_compression": [65, 58, 50, 40, 25],
    "layout": {"plasma": 64, "frost_scale": 0.3, "overlay": 64, "glass": "copy"},
}
_MNIST = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2, 0.5), (0.9, 2, 1, 0.5), (1, 2, 3, 0.5), (1.1, 3, 2, 0.5), (1.5, 4, 2, 0.5)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "elastic_transform": [(28 * 2, 28 * 0.7, 28 * 0.1), (28 * 2, 28 * 0.08, 28 * 0.2),
                          (28 * 0.05, 28 * 0.01, 28 * 0.02), (28 * 0.07, 28 * 0.01, 28 * 0.02),
                          (28 * 0.12, 28 * 0.01, 28 * 0.02)],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
    "layout": {"plasma": 256, "frost_scale": 1.0, "overlay": 28, "glass": "swap"},
}
# 8 x 8 digits (basin's own): MNIST-C's intensities (noise, brightness, contrast, JPEG quality, overlay weights);
# its lengths scaled by 8/28 (defocus: radii 0.5 to 2.86 px; motion; glass);
# snow, frost and fog drawn at 28 px with MNIST-C's parameters and shrunk to 8 px; pixelate to 7, 5, 4, 3, 2 px
# (6 px aliases worse than 5). Glass blur shifts by one pixel in 1..5 passes (MNIST-C's passes are not ordered
# by severity, and its shifts shrink below a pixel). Elastic: one displacement smoothing (1 px) with the
# displacement (0.5..1.5 px) and the affine jitter (0.1..0.5 px) rising together (MNIST-C's table trades a
# large smooth warp at severities 1-2 for a small rough one at 3-5, and is not ordered by strength).
_DIGITS = {
    **{k: _MNIST[k] for k in ("gaussian_noise", "shot_noise", "impulse_noise", "snow", "frost", "fog", "brightness",
                              "contrast", "jpeg_compression", "zoom_blur")},
    "defocus_blur": [(0.5, 0.5), (1, 0.3), (1.5, 0.3), (2, 0.3), (2.86, 0.3)],
    "glass_blur": [(0.2, 1, 1, 0.5), (0.26, 1, 2, 0.5), (0.29, 1, 3, 0.5), (0.31, 1, 4, 0.5), (0.43, 1, 5, 0.5)],
    "motion_blur": [(3, 0.86), (5, 1.43), (5, 2.29), (5, 3.43), (6, 4.29)],
    "elastic_transform": [(0.5, 1, 0.1), (0.75, 1, 0.2), (1, 1, 0.3), (1.25, 1, 0.4), (1.5, 1, 0.5)],
    "pixelate": [7 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8],
    "layout": {"plasma": 256, "frost_scale": 1.0, "overlay": 28, "glass": "swap"},
}
TABLES: dict[int, dict[str, Any]] = {32: _CIFAR, 64: _TINY_IMAGENET, 28: _MNIST, 8: _DIGITS}
SOURCES = {32: "CIFAR-10-C (make_cifar_c.py)", 64: "Tiny-ImageNet-C (make_tinyimagenet_c.py)",
           28: "MNIST-C (corruptions.py)", 8: "basin digits (docs/corruptions.md)"}


def params(side: int, name: str, severity: int) -> Any:
    """The parameters of one corruption at one severity (1-5) for images `side` pixels wide."""
    return TABLES[side][name][severity - 1]


def record(side: int, names: list[str], severities: list[int]) -> str:
    """What trials store in `corruption_generator`: the generator, the table used and its values, as JSON."""
    table = TABLES[side]
    return json.dumps({"generator": GENERATOR, "table": SOURCES[side], "layout": table["layout"],
                       "params": {n: {str(s): table[n][s - 1] for s in severities} for n in names}},
                      sort_keys=True)


# -- the published sets -----------------------------------------------------------------------------------
# The -C set of each training data set, as its folder is named when unpacked (under `corruption_dir`).
PUBLISHED = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C", "tiny_imagenet": "Tiny-ImageNet-C",
             "mnist": "mnist_c"}
# Hendrycks's four held-out corruptions, in the CIFAR and Tiny ImageNet releases beside the 15.
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
# MNIST-C: one fixed level per corruption (its rows carry severity 0 with the corruption's name).
MNIST_C = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
           "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges")


def known(source: str, dataset: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(what "all" means, every name allowed) for a corruption source and training data set."""
    if source == "published" and dataset == "mnist":
        return MNIST_C, MNIST_C
    if source == "published":
        return CORRUPTIONS, CORRUPTIONS + EXTRA
    return CORRUPTIONS, CORRUPTIONS
