"""Checks of this machine before a sweep starts: `basin run` without --address (a fixed local machine)
refuses, before Ray starts and before any file is written, a trial no node can place (it would wait for
ever) and a data set that is not on disk and cannot be downloaded (it would fail inside every trial);
`basin validate` runs the same checks. On a cluster these are facts of its nodes, not of this machine:
the runner then only warns about resources, once Ray tells it the nodes (runner.check_resources).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from orchestrator.cli import UserError
from orchestrator.sweep import Sweep
from trainers.data_files import corruption_problem, data_problem


def local_gpus() -> int:
    """GPUs a local Ray would see, without importing torch: CUDA_VISIBLE_DEVICES when set, else
    `nvidia-smi -L` (torch's count when it is imported already)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        return 0 if visible.strip() == "NoDevFiles" else len(ids)
    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.device_count()
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def local_resources(num_cpus: int | None = None) -> tuple[float, float]:
    """CPUs and GPUs of a local Ray on this machine (`num_cpus`: what --num-cpus gives it)."""
    return float(num_cpus or os.cpu_count() or 1), float(local_gpus())


def problems(sweep: Sweep, num_cpus: int | None = None) -> list[str]:
    """Every reason this machine cannot run the sweep, one line each, naming the file and the field."""
    out = []
    cpus, gpus = local_resources(num_cpus)
    if sweep.cpus > cpus or sweep.gpus > gpus:
        which = "gpus" if sweep.gpus > gpus else "cpus"
        out.append(f"{sweep.path}: resources.{which}: a trial needs {sweep.cpus:g} CPU and {sweep.gpus:g} GPU, "
                   f"but this machine has {cpus:g} CPU and {gpus:g} GPU "
                   "(on a cluster: basin run --address, basin validate --cluster)")
    seen: set[tuple] = set()
    for t in sweep.trials:
        c = t.config
        facts = (c.dataset, c.data_dir, c.download, c.corruption_source, c.corruptions, c.corruption_dir)
        if facts in seen:
            continue
        seen.add(facts)
        where = "" if len(sweep.trials) == 1 else f" (trial {t.name})"
        if problem := data_problem(c.dataset, c.data_dir, c.download):
            out.append(f"{sweep.path}: data_dir: {problem}{where}")
        if problem := corruption_problem(c.dataset, c.corruption_source, c.corruptions, c.corruption_dir,
                                         c.data_dir):
            out.append(f"{sweep.path}: corruption_dir: {problem}{where}")
    return list(dict.fromkeys(out))


def check(sweep: Sweep, num_cpus: int | None = None) -> None:
    """Raise UserError with the first problem (one line; it says how many more there are)."""
    found = problems(sweep, num_cpus)
    if found:
        more = len(found) - 1
        raise UserError(found[0] + (f" (and {more} more problem{'s' * (more > 1)} of this machine)" if more else ""))
