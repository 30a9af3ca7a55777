"""Packed trials: K trials that share a model and data shapes, trained in one process as one batched
computation, each still its own trial.

Why: one small network (cResNet20 at batch 128, an MLP on digits) uses a few percent of a GPU, and on a CPU
its step is dominated by per-operation overhead. K of them in one forward and one backward
(`torch.func.functional_call` + `vmap` over the trials' weights, BatchNorm buffers and batches) fill the
device and pay the overhead once.

What stays per trial: its `Run` (trainers/train.py): data labels (label noise), generator (batch order,
augmentation, subspace draws, regulariser pairs, in the same order as alone), parameters, optimizer and
schedule, epoch rows, validation, checkpoints, sink, final evaluation. So a packed trial gives the numbers
it would give alone, to float tolerance (the batched kernels sum in another order), writes the same rows,
and its checkpoint resumes packed or alone. Dropout is the exception: its masks come from one global
generator under vmap, so they differ from an unpacked run's (same distribution).

Which trials pack: configs equal but for PACK_FREE fields, of a method in config.PACKABLE_METHODS (a step
that draws coefficients, takes the cross-entropy there and adds beta cos^2: `subspace` of any shape, `swa`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from trainers import data as datasets
from trainers import models
from trainers.config import TrialConfig, pack_problem
from trainers.methods.base import Step
from trainers.results import Sink
from trainers.train import Run, make_optimizer, resident

# A pack steps its trials' parameters with one shared optimizer and advances each trial's own schedule (and
# so its checkpointed learning rate); torch warns that those schedules step before their optimizers do.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


class Pack:
    """The batched training step of K Runs whose methods share one model layout."""

    def __init__(self, runs: list[Run]):
        self.runs = runs
        first = runs[0].method.sub
        self.model = first.model  # the template: functional_call swaps in each trial's tensors
        paths = {id(m): n for n, m in first.model.named_modules()}
        self.names = [f"{paths[id(mod)]}.{attr}".lstrip(".") for mod, attr, *_ in first._slots]
        self.shapes = [shape for *_, shape in first._slots]
        self.numels = first._numels
        # Each trial's BatchNorm buffers become views of one stacked tensor: the batched forward updates the
        # stack, and each trial's own module (evaluation, checkpoints) sees the same numbers.
        self.buffers: dict[str, torch.Tensor] = {}
        for name, _ in first.model.named_buffers():
            owner, _, attr = name.rpartition(".")
            mods = [r.method.sub.model.get_submodule(owner) for r in runs]
            stacked = torch.stack([m._buffers[attr] for m in mods])
            for k, m in enumerate(mods):
                m._buffers[attr] = stacked[k]
            self.buffers[name] = stacked
        self.labels = torch.stack([r.data.train_y for r in runs])  # (K, N): each trial's own (noisy) labels
        self.opt = shared_optimizer(runs)
        c = runs[0].cfg
        self.regularise = c.beta > 0 and first.n_endpoints > 1
        self.label_smoothing = c.label_smoothing
        self.amp = runs[0].method.amp

    def forward(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        params = {n: p.view(s) for n, p, s in zip(self.names, flat.split(self.numels), self.shapes, strict=True)}
        return functional_call(self.model, (params, buffers), (x,))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> list[Step]:
        """One step of every trial: x (K, B, ...) and y (K, B) hold each trial's own batch."""
        subs = [r.method.sub for r in self.runs]
        coeffs = torch.stack([s.draw(r.g) for s, r in zip(subs, self.runs, strict=True)])  # each its own draw
        W = torch.stack([s.W for s in subs])                                                # (K, n, P)
        if W.shape[1] == 1:
            flat = W[:, 0]
        elif coeffs.dim() == 2:
            flat = torch.einsum("kn,knp->kp", coeffs.to(W.dtype), W)
        else:  # layer-wise: each weight mixed with its layer's coefficients
            flat = (coeffs.to(W.dtype)[:, subs[0].group].transpose(1, 2) * W).sum(1)
        with torch.autocast("cuda", torch.bfloat16, enabled=self.amp):
            logits = vmap(self.forward, randomness="different")(flat, self.buffers, x)
        logits = logits.float()
        k, b = y.shape
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), label_smoothing=self.label_smoothing,
                               reduction="none").view(k, b).mean(1)
        reg = torch.stack([r.cfg.beta * s.cos2(r.g) for s, r in zip(subs, self.runs, strict=True)]) \
            if self.regularise else torch.zeros_like(loss)
        (loss + reg).sum().backward()  # each trial's parameters get exactly its own loss's gradient
        correct = (logits.argmax(-1) == y).sum(1)
        return [Step(loss[i].detach(), reg[i].detach(), correct[i], b) for i in range(k)]

    def start_epoch(self, epoch: int) -> torch.Tensor:
        """(K, N): each trial's batch order for the epoch."""
        return torch.stack([r.start_epoch(epoch) for r in self.runs])

    def step(self, perms: torch.Tensor, i: int) -> None:
        """Training step i of every trial: batches, one forward and backward, one optimizer step."""
        x, y = self.batches(perms, i)
        self.opt.zero_grad(set_to_none=True)
        steps = self.train_step(x, y)
        for group in self.opt.param_groups:
            group["lr"] = self.runs[0].opt.param_groups[0]["lr"]  # the schedule every trial follows
        self.opt.step()
        for r, s in zip(self.runs, steps, strict=True):
            r.record(s)

    def batches(self, perms: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step i's batch of every trial, (K, B, ...) and (K, B): one gather for all, each trial's crops and
        flips drawn from its own generator (the same draws as Run.batch)."""
        runs = self.runs
        b = runs[0].batch_size
        idx = perms[:, i * b:(i + 1) * b]                                   # (K, B)
        x = datasets.augment_many(runs[0].data.train_x[idx.flatten()], runs[0].data.augment, [r.g for r in runs])
        return x.view(len(runs), b, *x.shape[1:]), self.labels.gather(1, idx)


def shared_optimizer(runs: list[Run]) -> torch.optim.Optimizer:
    """One optimizer over every trial's parameters (multi-tensor kernels: one step for the pack, not K). Each
    parameter keeps the state dict of its own trial's optimizer (the same dict object), so every trial's
    optimizer still checkpoints and resumes its own state; the trials' hyperparameters are equal (they
    differ only in PACK_FREE fields) and the learning rate is copied from the trials' schedules each step."""
    opt = make_optimizer(runs[0].cfg, [p for r in runs for p in r.method.parameters()])
    for r in runs:
        for p in r.method.parameters():
            opt.state[p] = r.opt.state[p]
    return opt


def shared_data(cfgs: list[TrialConfig]) -> list[datasets.Data]:
    """The data set loaded once, on the device, with each trial's own label noise."""
    c = cfgs[0]
    clean = resident(datasets.load(c.dataset, c.data_dir, c.download, c.val_fraction, 0.0, 0, c.augment,
                                   c.num_classes, c.train_size, c.test_size), c)
    return [datasets.with_noise(clean, cfg.label_noise, cfg.noise_seed) for cfg in cfgs]


def run_pack(cfgs: list[TrialConfig], sinks: list[Sink | None] | None = None,
             resumes: list[dict[str, Any] | None] | None = None,
             on_error: Callable[[int, Exception], None] | None = None) -> list[dict[str, list[dict[str, Any]]] | None]:
    """Train and evaluate K trials as one pack; returns each trial's rows, as run_trial would. Trials
    resumed from checkpoints must be at the same epoch (a pack checkpoints all its trials together).
    `on_error(i, e)`: trial i failed outside the shared step (its epoch's end: validation, checkpoint, sink;
    or its final evaluation); it leaves the pack, the others go on, and its entry is None. Without it, the
    error ends the pack."""
    problem = pack_problem(cfgs)
    if problem:
        raise ValueError(f"these trials cannot be packed: {problem}")
    sinks = sinks or [None] * len(cfgs)
    resumes = resumes or [None] * len(cfgs)
    runs = [Run(c, s, r, data=d) for c, s, r, d in zip(cfgs, sinks, resumes, shared_data(cfgs), strict=True)]
    if len({r.first for r in runs}) > 1:
        raise ValueError("packed trials resume from different epochs: "
                         + ", ".join(f"seed {r.cfg.seed} at epoch {r.first - 1}" for r in runs))
    out: list[dict[str, list[dict[str, Any]]] | None] = [None] * len(runs)
    alive = list(range(len(runs)))     # members that finish (completed or diverged)
    training = list(alive)             # members still stepping

    def attempt(i: int, work: Callable[[], Any]) -> bool:
        try:
            out[i] = work()
            return True
        except Exception as e:
            if on_error is None:
                raise
            on_error(i, e)
            return False

    pack = Pack(runs)
    for epoch in runs[0].epochs():
        perms = pack.start_epoch(epoch)
        for i in range(runs[0].steps):
            pack.step(perms, i)
        failed = {i for i in training if not attempt(i, lambda i=i, e=epoch: runs[i].end_epoch(e))}
        alive = [i for i in alive if i not in failed]
        # a diverged member keeps its rows as they are and stops training; so does a failed one
        still = [i for i in training if i not in failed and not runs[i].diverged_at]
        if not still:
            break
        if still != training:  # the others go on as a smaller pack (re-stacked; optimizer states are the trials')
            training = still
            pack = Pack([runs[i] for i in training])
    for i in alive:
        attempt(i, runs[i].finish)
    return out


def footprint(cfg: TrialConfig) -> tuple[int, int]:
    """Estimated bytes of device memory of one trial in a pack, and of the data its pack shares.

    Per trial: the subspace's n stacked weight vectors, their gradients and momentum, the mixed point and its
    gradient (4 bytes each), and one batch's activations, measured by a forward pass on the meta device (no
    memory, no compute) and counted twice (kept for backward, and their gradients). Shared: the training
    images in the training dtype. An estimate to refuse packs that cannot fit, not an allocator's account."""
    (c, h, w), classes = datasets.INPUT_SHAPES[cfg.dataset]
    dtype_bytes = 2 if cfg.amp else 4
    sizes: list[int] = []
    with torch.device("meta"):
        net = models.build(cfg.model, (c, h, w), cfg.num_classes or classes, cfg.width, cfg.batchnorm, cfg.dropout)
        for m in net.modules():
            if not any(m.children()):
                m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel()))
        net(torch.empty(cfg.batch_size, c, h, w))
    n_params = sum(p.numel() for p in net.parameters())
    per_trial = (3 * cfg.n_points + 2) * n_params * 4 + 2 * sum(sizes) * dtype_bytes
    shared = datasets.TRAIN_SIZES.get(cfg.dataset, 0) * c * h * w * dtype_bytes
    return per_trial, shared
