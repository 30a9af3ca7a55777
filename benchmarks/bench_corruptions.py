"""Corrupting 10,000 CIFAR-shaped test images at all five severities, per corruption: basin's torch generator
on the CPU (and on a GPU when one is available) against the `imagecorruptions` package (PyPI 1.1.2) where its
functions run. The package works one image at a time with ImageNet-C parameters (so the work differs a little:
a baseline of speed, not of output); it is timed on a subset and scaled to 10,000 images.

    python benchmarks/bench_corruptions.py [--images 10000] [--baseline-images 200] [--threads N]

The package imports `pkg_resources`, which current setuptools no longer has: a stand-in resolving its frost
photos is installed for this benchmark only. Its glass blur, gaussian blur and fog fail with NumPy 2 and
scikit-image 0.26 and are reported as such.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trainers.corruptions import CORRUPTIONS, corrupt, generator_for  # noqa: E402


def images(n: int, seed: int = 0) -> torch.Tensor:
    """CIFAR-shaped uint8 images with some structure (smooth colour fields plus texture), not white noise."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=32, mode="bicubic",
                                             align_corners=False)
    x = (0.8 * smooth + 0.2 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


def basin_seconds(x: torch.Tensor, name: str) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for s in range(1, 6):
        corrupt(x, name, s, generator_for(0, name, s, x.device))
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def load_imagecorruptions():
    """The package, with a stand-in `pkg_resources.resource_filename` (gone from setuptools)."""
    if "pkg_resources" not in sys.modules:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda pkg, name: os.path.join(
            os.path.dirname(importlib.util.find_spec(pkg).origin), name)
        sys.modules["pkg_resources"] = shim
    try:
        import imagecorruptions
    except ImportError as e:
        print(f"imagecorruptions not importable ({e}): no baseline")
        return None
    return imagecorruptions


def baseline_seconds(ic, x: np.ndarray, name: str, total: int) -> float | str:
    warnings.simplefilter("ignore")
    np.random.seed(0)
    t = time.perf_counter()
    try:
        for s in range(1, 6):
            for im in x:
                ic.corrupt(im, corruption_name=name, severity=s)
    except Exception as e:  # the package's own failures with current NumPy / scikit-image
        return f"fails: {type(e).__name__}: {str(e).splitlines()[0][:60]}"
    return (time.perf_counter() - t) * total / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--baseline-images", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = images(args.images)
    ic = load_imagecorruptions()
    sub = x[:args.baseline_images].permute(0, 2, 3, 1).numpy()
    cuda = torch.cuda.is_available()
    xg = x.cuda() if cuda else None
    if cuda:
        corrupt(xg[:64], "gaussian_noise", 1, generator_for(0, "gaussian_noise", 1, "cuda"))  # warm up
    print(f"{args.images} images 32x32x3, severities 1-5 each; torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}; imagecorruptions timed on {len(sub)} images and scaled")
    head = f"{'corruption':18s} {'basin CPU s':>11s} {'imagecorr. s':>12s} {'speed-up':>9s}"
    print(head + (f" {'basin GPU s':>11s} {'GPU vs CPU':>10s}" if cuda else ""))
    total_cpu, total_gpu = 0.0, 0.0
    for name in CORRUPTIONS:
        cpu = basin_seconds(x, name)
        total_cpu += cpu
        base = baseline_seconds(ic, sub, name, args.images) if ic else "not installed"
        ratio = f"{base / cpu:8.1f}x" if isinstance(base, float) else ""
        base_s = f"{base:12.1f}" if isinstance(base, float) else f"  {base}"
        line = f"{name:18s} {cpu:11.2f} {base_s} {ratio:>9s}"
        if cuda:
            gpu = basin_seconds(xg, name)
            total_gpu += gpu
            line = f"{name:18s} {cpu:11.2f} {gpu:11.3f} {cpu / gpu:9.0f}x   " + (f"{base_s} {ratio}" if ratio else "")
        print(line)
    gpu_note = f"   GPU {total_gpu:.3f} s ({total_cpu / total_gpu:.0f}x)" if cuda else ""
    print(f"{'all 15':18s} {total_cpu:11.2f}{gpu_note}")


if __name__ == "__main__":
    main()
