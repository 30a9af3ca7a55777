"""Validating a large sweep (on demand: `python benchmarks/bench_validate.py [--trials 100000]`): load_sweep
(parse, expand, check and name every trial) of a grid of N trials against a 10,000-trial grid in the same run,
and the refusal of a 10^7 grid from its axes' sizes. Prints seconds and the ratio (linear scaling: N / 10,000).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from orchestrator.cli import UserError
from orchestrator.sweep import load_sweep

LRS = [round(0.01 * (i + 1), 2) for i in range(10)]


def grid(folder: Path, name: str, n: int) -> Path:
    """A sweep of n trials (n a power of 10, at least 10): seed x lr x width x noise_seed ... axes of 10."""
    fields = ["seed", "lr", "width", "noise_seed", "batch_size", "epochs", "ece_bins"]
    axes: dict = {}
    for f in fields[:len(str(n)) - 1]:
        axes[f] = LRS if f == "lr" else list(range(1, 11))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "axes": axes, "max_trials": max(n, 100_000)}))
    return path


def timed(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = len(load_sweep(path).trials)
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=100_000, help="a power of 10 (default 100000)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        base_s, base_n = timed(grid(folder, "base", 10_000))
        big_s, big_n = timed(grid(folder, "big", args.trials))
        huge = folder / "huge.yaml"
        huge.write_text(yaml.safe_dump({"name": "huge", "axes": {f: list(range(10)) for f in (
            "seed", "noise_seed", "width", "batch_size", "epochs", "ece_bins", "alpha_grid")}}))
        t0 = time.perf_counter()
        try:
            load_sweep(huge)
            raise SystemExit("a 10^7 grid was not refused")
        except UserError:
            refused = time.perf_counter() - t0
    print(f"validate {base_n} trials: {base_s:.2f} s ({1e3 * base_s / base_n:.3f} ms/trial)")
    print(f"validate {big_n} trials: {big_s:.2f} s ({1e3 * big_s / big_n:.3f} ms/trial); ratio to {base_n}: "
          f"{big_s / base_s:.1f}x for {big_n / base_n:.0f}x the trials")
    print(f"refuse a 10^7 grid: {1e3 * refused:.1f} ms")


if __name__ == "__main__":
    main()
