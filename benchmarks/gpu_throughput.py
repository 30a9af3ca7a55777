"""Throughput of small-model sweeps on one accelerator: images/s and trials/hour of cResNet20 on
CIFAR-10-shaped data (`synthetic_cifar10`: random images, the real shapes), all measured in one run and
printed as ratios to the papers' way (one trial per GPU fed by a DataLoader):

  1. dataloader       one trial, a plain nn.Module fed by a torch DataLoader (CPU crop/flip, 4 workers), fp32
  2. resident         one basin trial (Run), data resident on the device, crop/flip batched on the device
  3. + bf16 + NHWC    the same with bf16 autocast and channels_last
  4. fractional x4    four processes each running (3) on the same device at once (gpus: 0.25 each)
  5. packed K         K basin trials as one vmapped step (trainers/pack.py), bf16 + NHWC, for each K

Trials/hour assume the paper's trial: 160 epochs of 50,000 images. The fraction of the device's bf16 peak
counts 3 x 2 x (multiply-adds of one forward) per training image against a large bf16 matrix product
measured in the same run. `--full-trial K` also times K packed 160-epoch line trials end to end.

    python benchmarks/gpu_throughput.py                    # on a GPU (target: packed K = 16 >= 8x (1))
    python benchmarks/gpu_throughput.py --device cpu --quick   # checks every path on a CPU, small sizes
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch
import torch.nn.functional as F

EPOCH_IMAGES, EPOCHS = 50_000, 160


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def macs_per_image(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass, counted from the conv and linear layers' output shapes."""
    total = 0

    def hook(m: torch.nn.Module, _: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += out[0].numel() * m.in_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def matmul_peak(device: torch.device, n: int) -> float:
    """bf16 FLOP/s of an n x n x n matrix product (the device's practical peak), median of 5."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(7):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times[2:])


def trial_config(args: argparse.Namespace, **kw):
    from trainers.config import make_config

    return make_config({"dataset": "synthetic_cifar10", "model": "cresnet20", "shape": "point", "batch_size": 128,
                        "augment": True, "epochs": 1, "warmup_epochs": 0, "eval_every": 0, "checkpoint_every": 0,
                        "ensemble_samples": 0, "val_fraction": 0.0, "device": str(args.device), **kw})


def dataloader_rate(args: argparse.Namespace) -> float:
    """(1): the papers' loop: uint8 images on the host, torchvision transforms in DataLoader workers."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    from trainers.data import LOADERS
    from trainers.models import build

    x, y, _, _ = LOADERS["synthetic_cifar10"]("", False)
    n = args.steps * 128 + 128 * 4

    class Images(Dataset):
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                        T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return self.tf(torch.from_numpy(x[i]).float() / 255), int(y[i])

    loader = DataLoader(Images(), batch_size=128, shuffle=True, num_workers=args.workers, pin_memory=True,
                        drop_last=True, persistent_workers=False)
    model = build("cresnet20", (3, 32, 32), 10, 16, True, 0.0).to(args.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    seen, t = 0, 0.0
    for i, (xb, yb) in enumerate(loader):
        if i == 3:  # warm-up steps: workers starting, kernels selected
            sync(args.device)
            t, seen = time.perf_counter(), 0
        xb, yb = xb.to(args.device, non_blocking=True), yb.to(args.device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(yb)
    sync(args.device)
    return seen / (time.perf_counter() - t)


def run_rate(args: argparse.Namespace, amp: bool, channels_last: bool) -> float:
    """(2), (3): basin's own trial loop (trainers.train.Run) for args.steps steps."""
    from trainers.train import Run

    run = Run(trial_config(args, amp=amp, channels_last=channels_last))
    perm = run.start_epoch(1)
    steps = min(args.steps + 3, run.steps)
    for i in range(steps):
        if i == 3:
            sync(args.device)
            t = time.perf_counter()
        x, y = run.batch(perm, i)
        run.opt.zero_grad(set_to_none=True)
        run.step(run.method.train_step(x, y, run.g))
    sync(args.device)
    return (steps - 3) * run.batch_size / (time.perf_counter() - t)


def _fractional_worker(args: argparse.Namespace, start: mp.Event, out: mp.Queue) -> None:
    rate = None
    start.wait()
    rate = run_rate(args, amp=args.device.type == "cuda", channels_last=True)
    out.put(rate)


def fractional_rate(args: argparse.Namespace, k: int) -> float:
    """(4): k processes training at once on the device, like k trials with gpus: 1/k each."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_fractional_worker, args=(args, start, out)) for _ in range(k)]
    for p in procs:
        p.start()
    start.set()
    rates = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def packed_rate(args: argparse.Namespace, k: int) -> float:
    """(5): k trials (seeds) as one pack."""
    from trainers.pack import Pack, shared_data
    from trainers.train import Run

    cfgs = [trial_config(args, seed=s, amp=args.device.type == "cuda", channels_last=True) for s in range(k)]
    runs = [Run(c, data=d) for c, d in zip(cfgs, shared_data(cfgs), strict=True)]
    pack = Pack(runs)
    perms = pack.start_epoch(1)
    steps = min(args.steps + 3, runs[0].steps)
    for i in range(steps):
        if i == 3:
            sync(args.device)
            t = time.perf_counter()
        pack.step(perms, i)
    sync(args.device)
    return (steps - 3) * k * runs[0].batch_size / (time.perf_counter() - t)


def full_trials(args: argparse.Namespace, k: int, epochs: int) -> None:
    """K packed line trials end to end (data load, every epoch, final evaluation): seconds per trial."""
    from trainers.pack import run_pack

    cfgs = [trial_config(args, shape="line", epochs=epochs, warmup_epochs=5 if epochs > 5 else 0, alpha_grid=21,
                         ensemble_samples=5, amp=args.device.type == "cuda", channels_last=True, seed=s)
            for s in range(k)]
    sync(args.device)
    t = time.perf_counter()
    run_pack(cfgs)
    sync(args.device)
    total = time.perf_counter() - t
    print(f"\nfull trials: {k} packed cResNet20 line trials x {epochs} epochs end to end: {total:.1f} s, "
          f"{total / k:.1f} s of device time per trial (goal for 160 epochs: < 60 s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant (after 3 warm-up steps)")
    p.add_argument("--packs", default="4,8,16,32")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for (1)")
    p.add_argument("--quick", action="store_true", help="a few steps and small packs: checks the paths (CPU)")
    p.add_argument("--full-trial", type=int, default=0, metavar="K", help="also time K packed full trials")
    p.add_argument("--full-epochs", type=int, default=EPOCHS)
    args = p.parse_args()
    if args.quick:
        args.steps, args.packs, args.workers = 2, "2,4", 1
    args.device = torch.device(args.device)
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}")
    from trainers.models import build

    flops_per_image = 3 * 2 * macs_per_image(build("cresnet20", (3, 32, 32), 10, 16, True, 0.0), (3, 32, 32))
    peak = matmul_peak(args.device, 8192 if args.device.type == "cuda" else 1024)
    print(f"cResNet20: {flops_per_image / 1e6:.0f} MFLOP per training image; "
          f"measured {'bf16' if args.device.type == 'cuda' else 'fp32'} matmul peak {peak / 1e12:.1f} TFLOP/s")

    rows = [("1. one trial, DataLoader, fp32", dataloader_rate(args)),
            ("2. one trial, device-resident", run_rate(args, amp=False, channels_last=False)),
            ("3. + bf16 + channels_last", run_rate(args, amp=args.device.type == "cuda", channels_last=True)),
            ("4. 4 fractional trials (0.25 each)", fractional_rate(args, 4))]
    rows += [(f"5. packed K = {k}", packed_rate(args, k)) for k in map(int, args.packs.split(","))]
    base = rows[0][1]
    print(f"\n{'variant':<38}{'images/s':>12}{'trials/hour':>13}{'ratio':>8}{'of peak':>9}")
    for label, rate in rows:
        per_hour = rate * 3600 / (EPOCH_IMAGES * EPOCHS)
        print(f"{label:<38}{rate:>12,.0f}{per_hour:>13.2f}{rate / base:>7.2f}x{rate * flops_per_image / peak:>8.1%}")
    if args.full_trial:
        full_trials(args, args.full_trial, args.full_epochs)


if __name__ == "__main__":
    main()
