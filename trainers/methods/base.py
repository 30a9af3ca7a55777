"""What a method is: how one trial's weights are parametrised, trained and evaluated.

A method is an nn.Module that holds every tensor of a trial's state, so its state_dict is the checkpoint.
It wraps a plain model through `trainers.subspace.Subspace` (the model's parameters become views of flat
weights), so any point in weight space can be set and evaluated without copying weights around. A method
answers five questions, and `run_trial` asks them in one readable pass:

- `build`: which weights exist (a Subspace, plus anything else the method registers);
- `train_step`: what one step computes (forward, loss, backward; the loop steps the optimizer);
- `lr_factor`: the learning-rate schedule (the config's, unless the method has its own);
- `val_point` / `points`: where validation looks during training, and which points the final evaluation
  visits (each point says which ensemble it is a member of);
- `main` / `ensemble`: the point and the ensemble the trial is judged by.

Every point is evaluated the same way (`predict`): set its weights, recompute BatchNorm statistics where the
running ones do not belong to that point, and return probabilities.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainers.config import TrialConfig
from trainers.data import Data
from trainers.models import build
from trainers.subspace import Subspace

EVAL_BATCH = 1024


@dataclass
class Point:
    """A point the evaluation visits, and what its rows are called."""

    name: str                             # evals.point: endpoint_0, center, alpha_0.25, swa, member_1, ...
    kind: str                             # evals.kind: endpoint, center, alpha, simplex, sample, swa, ...
    coords: torch.Tensor | None = None    # coefficients over the stacked weights: (n,) or (layers, n)
    alpha: float | None = None            # position along a line or curve
    member_of: str = ""                   # the ensemble it is a member of: "endpoints" -> ensemble_endpoints
    weights: torch.Tensor | None = None   # flat weights of a point off the trained subspace (SWA, samples)
    head: int | None = None               # one head of a multi-head network (MIMO)

    def key(self) -> tuple | None:
        """Points with equal keys share one evaluation (alpha 0 and endpoint 0, say); None: never shared."""
        if self.weights is not None:
            return None
        return (tuple(self.coords.flatten().tolist()) if self.coords is not None else (), self.head)


@dataclass
class Step:
    """What one training step reports: detached sums, accumulated by the loop."""

    loss: torch.Tensor      # mean cross-entropy of the step
    reg: torch.Tensor       # regulariser added to it
    correct: torch.Tensor   # correct training predictions
    seen: int               # training predictions made


class Method(nn.Module):
    """The base of every method: a Subspace around `cfg.model`, the config's schedule, and the evaluation
    of points. Subclasses define build, train_step, val_point and points (and main / ensemble)."""

    main: str = "center"      # the point (or ensemble) the trial is judged by
    ensemble: str = ""        # the trial's own ensemble ("" = none; seeds are ensembled by analysis)

    def __init__(self, cfg: TrialConfig, data: Data, device: torch.device,
                 endpoint_states: Callable[[TrialConfig], list[dict]] | None = None):
        super().__init__()
        self.cfg, self.data = cfg, data
        self.endpoint_states = endpoint_states  # other trials' final states, for methods built on them (connect)
        self.amp = cfg.amp and device.type == "cuda"
        self.sub = self.build()
        self.sub.channels_last = cfg.channels_last
        self.to(device)
        # the network as the methods call it: compiled when asked (trainers.train compiles it before the first
        # step and times that); the parameters stay views set by the Subspace, read at every call
        self.net = torch.compile(self.sub.model) if cfg.compile else self.sub.model

    # -- building ---------------------------------------------------------------------------------------
    def build(self) -> Subspace:
        raise NotImplementedError

    def make_model(self, in_shape: tuple[int, ...] | None = None, classes: int | None = None) -> nn.Module:
        c = self.cfg
        return build(c.model, in_shape or self.data.in_shape, classes or self.data.classes, c.width, c.batchnorm,
                     c.dropout)

    # -- training ---------------------------------------------------------------------------------------
    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        c = self.cfg
        return lr_factor(step, steps_per_epoch * c.epochs, steps_per_epoch * c.warmup_epochs, c.schedule)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Step:
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> None:
        """Called after each epoch's last step (SWA collects its snapshots here)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", torch.bfloat16) if self.amp else contextlib.nullcontext()

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the memory format the config asks for."""
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and x.dim() == 4 else x

    def loss_at(self, c: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and logits of the model at coefficients c (weights mixed in fp32, outside autocast)."""
        self.sub.set_point(c)
        with self.autocast():
            logits = self.net(self.input(x))
        return F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing), logits

    def step_at(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Step:
        """One step of a method without a regulariser: cross-entropy at flat weights `flat`, backward."""
        self.sub.set_flat(flat)
        with self.autocast():
            logits = self.net(self.input(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        loss.backward()
        return Step(loss.detach(), loss.new_zeros(()), (logits.argmax(1) == y).sum(), len(y))

    # -- evaluation -------------------------------------------------------------------------------------
    def compile_now(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Run the compiled graphs once (a training step, a BatchNorm refresh, an evaluation) and put every
        tensor back as it was; returns the seconds this took, which is what compiling costs."""
        saved = {k: v.clone() for k, v in self.state_dict().items()}
        t = time.perf_counter()
        self.train()
        self.train_step(x, y, torch.Generator(device=x.device).manual_seed(0))  # a throwaway generator
        self.predict(self.val_point(), {"warm-up": x})
        seconds = time.perf_counter() - t
        self.load_state_dict(saved)
        for p in self.parameters():
            p.grad = None
        return seconds

    def val_point(self) -> Point:
        raise NotImplementedError

    def points(self, g: torch.Generator) -> list[Point]:
        raise NotImplementedError

    def solution(self) -> Point:
        """The one network that stands for the trial where one is needed: Fort's samplers draw around it and
        their trajectory records it (the validation point, unless that is an ensemble)."""
        return self.val_point()

    def extra_evals(self, epoch: int) -> list[dict]:
        """evals rows beyond the points, computed by the method itself (MPO: its plane's heat maps)."""
        return []

    def weight_points(self) -> list[Point]:
        """Points whose weights the `weights` table records (a random projection per epoch)."""
        return [self.solution()]

    def flat(self, point: Point) -> torch.Tensor:
        """The flat weights of a point."""
        return point.weights if point.weights is not None else self.sub.weights(point.coords)

    def needs_bn(self, point: Point) -> bool:
        """Whether the running BatchNorm statistics are not this point's own: every point of a trained
        subspace (the statistics were gathered at random points) and every point off it."""
        return point.weights is not None or self.sub.W.shape[0] > 1

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for a batch of plain inputs at the weights set now."""
        return self.net(self.input(x))

    def place(self, point: Point) -> None:
        """Set the model's weights to the point, with BatchNorm statistics that belong to it."""
        if point.weights is not None:
            self.sub.set_flat(point.weights)
        else:
            self.sub.set_point(point.coords)
        if self.needs_bn(point):
            with self.autocast():  # the training images may be held in bf16
                refresh_bn(self.sub.model, self.logits, self.data.train_x, self.cfg.batch_size, self.cfg.bn_batches)

    @torch.no_grad()
    def predict(self, point: Point, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Probabilities (float32, on the data's device) of each split's inputs at the point."""
        self.place(point)
        self.eval()
        return {split: self.probs(x) for split, x in xs.items()}

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), EVAL_BATCH):
            with self.autocast():
                out.append(self.logits(x[i:i + EVAL_BATCH]).float().softmax(-1))
        return torch.cat(out)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to zero (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def batch_norms(model: nn.Module) -> Iterator[_BatchNorm]:
    return (m for m in model.modules() if isinstance(m, _BatchNorm))


@torch.no_grad()
def refresh_bn(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int,
               max_batches: int = 0) -> None:
    """Reset the BatchNorm statistics of `model` and re-estimate them at its current weights as a cumulative
    average over `x` (training data, no augmentation), running `forward`. Without this every point but the
    trained one is evaluated with wrong statistics."""
    bns = list(batch_norms(model))
    if not bns:
        return
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()          # only BN layers: dropout stays off
    n_batches = math.ceil(len(x) / batch)
    for i in range(min(n_batches, max_batches) if max_batches else n_batches):
        forward(x[i * batch:(i + 1) * batch])
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


def recompute_bn(sub: Subspace, c: torch.Tensor, x: torch.Tensor, batch: int, max_batches: int = 0) -> None:
    """BatchNorm statistics of a Subspace at coefficients c (see refresh_bn)."""
    sub.set_point(c)
    refresh_bn(sub.model, sub.model, x, batch, max_batches)
