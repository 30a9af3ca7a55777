"""Cost of the Hessian probes (run on demand: `python benchmarks/bench_probes.py`).

cResNet20 (width 16, BatchNorm in eval mode with statistics recomputed on the probe's examples) on 1,000
CIFAR-shaped examples (random inputs and labels: no data set download; the cost does not depend on the
values): the top-10 Hessian eigenvalues (Lanczos, SciPy eigsh on curvlinops' Hessian-vector products) and
the Hutchinson trace, in seconds and as multiples of one gradient pass over the same examples measured in
the same run (the baseline), on the CPU and on the GPU when there is one. Prints the machine's load.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from trainers import methods, probes
from trainers.config import make_config
from trainers.data import Data
from trainers.methods.base import refresh_bn


def counted(H: probes.Columns) -> list[int]:
    """Count the vectors H is applied to (eigsh's iterations)."""
    n = [0]
    inner = H._matmat

    def matmat(X: list[torch.Tensor]) -> list[torch.Tensor]:
        n[0] += X[0].shape[1]
        return inner(X)

    H._matmat = matmat
    return n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(device: torch.device, examples: int, k: int, samples: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(examples, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (examples,), device=device)
    data = Data(x, y, x[:0], y[:0], x[:0], y[:0], classes=10)
    cfg = make_config({"preset": "subspaces", "dataset": "cifar10", "shape": "point", "device": str(device)})
    method = methods.build(cfg, data, device)
    refresh_bn(method.sub.model, method.logits, x, probes.BATCH)
    method.eval()
    model = probes.FlatModel(method, method.flat(method.val_point()))
    n = model.w.numel()

    def gradient_pass() -> None:  # the baseline: loss and gradient over the same examples, same batches
        model.zero_grad(set_to_none=True)
        for i in range(0, examples, probes.BATCH):
            F.cross_entropy(model(x[i:i + probes.BATCH]), y[i:i + probes.BATCH], reduction="sum").backward()
        sync(device)

    gradient_pass()  # warm-up
    t = time.perf_counter()
    gradient_pass()
    grad_s = time.perf_counter() - t

    H = probes.hessian(model, x, y)
    H @ torch.randn(n, device=device)  # warm-up
    count = counted(H)
    t = time.perf_counter()
    H @ torch.randn(n, device=device)
    sync(device)
    hvp_s = time.perf_counter() - t

    count[0] = 0
    t = time.perf_counter()
    top = probes.top_eigenvalues(H, k)
    sync(device)
    eig_s, eig_mv = time.perf_counter() - t, count[0]

    count[0] = 0
    t = time.perf_counter()
    tr = probes.trace(H, samples)
    sync(device)
    trace_s, trace_mv = time.perf_counter() - t, count[0]

    print(f"\n{device} · cResNet20, {n:,} weights, {examples} examples, batch {probes.BATCH}, "
          f"{H.columns} vector(s) per batched product, torch threads {torch.get_num_threads()}")
    print(f"  {'':34}{'seconds':>10}{'x gradient':>12}{'products':>10}")
    print(f"  {'gradient pass (baseline)':34}{grad_s:>10.2f}{1.0:>12.2f}")
    print(f"  {'one Hessian-vector product':34}{hvp_s:>10.2f}{hvp_s / grad_s:>12.2f}{1:>10}")
    print(f"  {f'top-{k} eigenvalues (Lanczos)':34}{eig_s:>10.2f}{eig_s / grad_s:>12.2f}{eig_mv:>10}")
    print(f"  {f'trace (Hutchinson, {samples} vectors)':34}{trace_s:>10.2f}{trace_s / grad_s:>12.2f}{trace_mv:>10}")
    print(f"  top eigenvalues {', '.join(f'{v:.3g}' for v in top)}; trace {tr:.4g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--samples", type=int, default=30, help="Hutchinson vectors")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for device in [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []):
        bench(device, a.examples, a.k, a.samples)


if __name__ == "__main__":
    main()
