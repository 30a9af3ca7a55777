"""Packed trials in a sweep (`pack: K` or `pack: auto`; trainers/pack.py trains them): how many trials go in
one Ray Tune trial, which ones, and the memory check that refuses, before anything starts, a packing that
cannot fit, saying how many do.

A pack is one Tune trial holding K member trials that differ only in config.PACK_FREE fields (seeds, label
noise); each member keeps its own attempt markers, checkpoint, Parquet rows and MLflow run (runner.py).
Trials that cannot pack (another method, channels_last, compile) run alone.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from orchestrator.cli import UserError
from orchestrator.sweep import Sweep, Trial
from trainers.config import pack_key, pack_problem

GiB = 2 ** 30
MAX_AUTO = 32       # `auto` packs at most this many: beyond it a GPU is full of work anyway (gpu_throughput.py)
HEADROOM = 0.9      # of a budget: the allocator's fragmentation, CUDA context, evaluation's extra tensors


def groups(trials: list[Trial]) -> list[list[Trial]]:
    """Trials that can share a pack, in file order; every unpackable trial alone."""
    out: dict[str, list[Trial]] = {}
    for t in trials:
        k = pack_key(t.config) if not pack_problem([t.config]) else f"alone-{t.key}"
        out.setdefault(k, []).append(t)
    return list(out.values())


def units(trials: list[Trial], k: int) -> list[list[Trial]]:
    """The Tune trials of a run: each group cut into packs of at most k."""
    return [g[i:i + k] for g in groups(trials) for i in range(0, len(g), max(1, k))]


def unit_param(unit: list[Trial]) -> dict[str, Any]:
    """What travels to the Tune trial: a trial's param, or a pack's (its members' params under `members`;
    its key hashes theirs, its name says who is in it)."""
    if len(unit) == 1:
        return unit[0].param()
    members = [t.param() for t in unit]
    key = "pack-" + hashlib.sha1("".join(m["key"] for m in members).encode()).hexdigest()[:12]
    return {"key": key, "name": f"pack of {len(unit)}: {unit[0].name} ...", "config": members[0]["config"],
            "members": members}


def members(param: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials of a Tune trial's param: a pack's members, or the trial itself."""
    return param.get("members") or [param]


def budget(sweep: Sweep) -> tuple[float, str] | None:
    """Bytes one Tune trial may use and where that figure comes from; None when it cannot be told here."""
    if sweep.gpus > 0:
        per_gpu = sweep.gpu_memory * GiB or _local_gpu_memory()
        if not per_gpu:
            return None
        return sweep.gpus * per_gpu, f"{sweep.gpus:g} x {per_gpu / GiB:.0f} GiB of GPU memory"
    if sweep.memory:
        return sweep.memory * GiB, f"resources.memory {sweep.memory:g} GiB"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return float(ram), f"this machine's {ram / GiB:.0f} GiB of RAM"


def _local_gpu_memory() -> float:
    try:
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else 0.0
    except Exception:
        return 0.0


def pack_size(sweep: Sweep) -> int:
    """The sweep's trials per pack, `auto` resolved; raises UserError (one line, before anything starts) when
    a packing, or a fraction of a GPU, cannot fit its budget. Imports torch (footprints are measured on the
    meta device) only for sweeps that pack or share GPUs."""
    if sweep.pack == 1 and not 0 < sweep.gpus < 1:
        return 1
    if sweep.pack == "auto" and sweep.gpus == 0:
        return 1  # on CPUs a pack trains no faster than its trials one by one (docs/performance.md)
    room = budget(sweep)
    if room is None:
        if sweep.pack == "auto":
            raise UserError(f"{sweep.path}: pack: auto needs the GPU's memory, and no GPU is visible here: give "
                            f"resources.gpu_memory (GiB of one GPU)")
        return int(sweep.pack)
    from trainers.pack import footprint

    limit, where = room
    usable = HEADROOM * limit
    fits = []
    for g in groups(sweep.trials):
        per, shared = footprint(g[0].config)
        fits.append((int((usable - shared) // per), per, shared, g))
    n, per, shared, g = min(fits, key=lambda f: f[0])
    what = f"{g[0].config.model} on {g[0].config.dataset}"
    if n < 1:
        raise UserError(f"{sweep.path}: resources: a trial of {what} needs about {(per + shared) / GiB:.1f} GiB, but "
                        f"one gets {usable / GiB:.1f} GiB ({HEADROOM:.0%} of {where})")
    packable = [f for f in fits if not pack_problem([f[3][0].config])]
    if sweep.pack == 1 or not packable:
        return 1
    n, per, shared, g = min(packable, key=lambda f: f[0])
    if sweep.pack == "auto":
        return max(1, min(MAX_AUTO, n, max(len(f[3]) for f in packable)))
    k = int(sweep.pack)
    if k > n:
        need = (k * per + shared) / GiB
        raise UserError(f"{sweep.path}: pack: {k} trials of {g[0].config.model} on {g[0].config.dataset} need "
                        f"about {need:.1f} GiB ({per / GiB:.2f} GiB each + {shared / GiB:.2f} GiB of data), but a "
                        f"pack gets {usable / GiB:.1f} GiB ({HEADROOM:.0%} of {where}): at most {n} fit")
    return k
