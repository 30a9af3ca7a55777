"""`swa` (Izmailov et al. 2018; the subspaces paper's two SWA baselines): standard training whose weights
are averaged over the last part of the run. The first `swa_start` epochs follow the config's warm-up and a
cosine decay from `lr` down to `swa_lr`; then either a high constant learning rate `swa_lr` with a snapshot
at the end of every epoch, or cycles of `swa_cycle` epochs, each decaying linearly from `lr` to `swa_lr`,
with a snapshot at the end of every cycle. The average of the snapshots, with BatchNorm statistics
recomputed for it, is the trial's main point `swa`; the last `ensemble_samples` snapshots are ensembled as
`ensemble_snapshots`, and the final iterate is evaluated as `point`."""

from __future__ import annotations

import torch

from trainers.config import swa_start
from trainers.methods.base import Point, lr_factor
from trainers.methods.subspace import SubspaceMethod


class SWA(SubspaceMethod):
    main = "swa"
    ensemble = "ensemble_snapshots"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n, k = self.sub.n_params, self.cfg.ensemble_samples
        # buffers: part of the state_dict, so a resumed trial continues the same average
        self.register_buffer("average", torch.zeros(n, device=self.sub.W.device))
        self.register_buffer("collected", torch.zeros((), dtype=torch.long, device=self.sub.W.device))
        self.register_buffer("snapshots", torch.zeros(k, n, device=self.sub.W.device))  # a ring of the last k
        self.start = swa_start(self.cfg)

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        c = self.cfg
        low = c.swa_lr / c.lr
        begin, warm = self.start * steps_per_epoch, c.warmup_epochs * steps_per_epoch
        if step < begin:  # the config's warm-up, then a cosine from lr down to swa_lr
            f = lr_factor(step, begin, warm, "cosine")
            return f if step < warm else low + (1 - low) * f
        if not c.swa_cycle:
            return low
        cycle = c.swa_cycle * steps_per_epoch
        t = ((step - begin) % cycle + 1) / cycle  # 1/cycle ... 1 within each cycle: lr down to swa_lr
        return (1 - t) + t * low

    def collects(self, epoch: int) -> bool:
        after = epoch - self.start
        return after >= 1 and (not self.cfg.swa_cycle or after % self.cfg.swa_cycle == 0)

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> None:
        if not self.collects(epoch):
            return
        w = self.sub.W[0].detach()
        n = int(self.collected)
        self.average += (w - self.average) / (n + 1)  # running mean of every snapshot collected
        if len(self.snapshots):
            self.snapshots[n % len(self.snapshots)] = w
        self.collected += 1

    def points(self, g: torch.Generator) -> list[Point]:
        n = int(self.collected)
        kept = sorted(range(max(0, n - len(self.snapshots)), n))  # collection order, oldest first
        snaps = [Point(f"snapshot_{i}", "snapshot", weights=self.snapshots[i % len(self.snapshots)],
                       member_of="snapshots") for i in kept]
        return [Point("swa", "swa", weights=self.average), self.val_point(), *snaps]

    def weight_points(self) -> list[Point]:
        return [self.val_point(), Point("swa", "swa", weights=self.average)] if int(self.collected) else \
            [self.val_point()]

