"""One trial, start to finish: a plain function of a config and a sink (no Ray, no MLflow).

The trial's `method` (trainers/methods/) decides how the weights are parametrised, what a step computes and
which points the final evaluation visits; this loop is the same for all of them. All randomness after model
initialisation comes from one torch.Generator on the data's device (batch order, augmentation, the method's
draws), and its state is in every checkpoint, so a trial resumed from a checkpoint gives the same numbers as
one that never stopped.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from typing import Any

import torch

from trainers import corruption_sets, methods
from trainers import data as datasets
from trainers.config import TrialConfig, sampler_list
from trainers.evaluate import evaluate, probes
from trainers.methods.base import Method, Step, lr_factor, recompute_bn
from trainers.metrics import classification_metrics
from trainers.results import Sink, trial_row
from trainers.samplers import SAMPLED_BY_FIT, Trajectory
from trainers.schema import at_chance, main_test_accuracy

__all__ = ["Run", "lr_factor", "make_optimizer", "pick_device", "projection", "recompute_bn", "run_trial"]

PROJECTION_SEED = 20211  # one fixed projection for every trial, so weights stay comparable across trials


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(cfg: TrialConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def projection(w: torch.Tensor, dim: int) -> torch.Tensor:
    """A fixed Gaussian random projection of a flat weight vector, generated in chunks on the CPU so the
    (dim x P) matrix is never held whole; the same for every trial with the same weight layout."""
    g = torch.Generator().manual_seed(PROJECTION_SEED)
    w = w.detach().float().cpu()
    out = torch.zeros(dim)
    for start in range(0, len(w), 1 << 16):
        chunk = w[start:start + (1 << 16)]
        out += torch.randn(dim, len(chunk), generator=g) @ chunk
    return out / math.sqrt(dim)


def weight_rows(cfg: TrialConfig, method: Method, epoch: int) -> list[dict[str, Any]]:
    rows = []
    with torch.no_grad():
        for p in method.weight_points():
            w = method.flat(p)
            rows.append(dict(epoch=epoch, point=p.name, norm=float(w.norm()),
                             projection=projection(w, cfg.weight_projection)))
    return rows


def better(metric: str, value: float, best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    return value > best["value"] if metric == "accuracy" else value < best["value"]


def chance_accuracy(labels: torch.Tensor) -> float | None:
    """The accuracy of always predicting the most common class of `labels` (None for no labels)."""
    return float(torch.bincount(labels.long().cpu()).max()) / len(labels) if len(labels) else None


def resident(d: datasets.Data, cfg: TrialConfig) -> datasets.Data:
    """The data on the trial's device for good, its training images in the training dtype (bf16 under amp
    on a GPU: half the memory and bandwidth; evaluation keeps float32 inputs)."""
    device = pick_device(cfg.device)
    d = d.to(device)
    if cfg.amp and device.type == "cuda":
        d = replace(d, train_x=d.train_x.to(torch.bfloat16))
    return d


# -- the trial --------------------------------------------------------------------------------------------
class Run:
    """One trial between its epochs: its data, method, generator, optimizer, schedule and the rows recorded
    so far. `run_trial` drives one Run; `trainers.pack` drives several as one batched computation. A Run
    built from `resume` (a state an earlier run handed to its sink) continues exactly where that one was."""

    def __init__(self, cfg: TrialConfig, sink: Sink | None = None, resume: dict[str, Any] | None = None,
                 data: datasets.Data | None = None):
        self.started = time.time()
        self.cfg, self.sink = cfg, sink
        self.device = pick_device(cfg.device)
        self.data = d = data if data is not None else resident(datasets.load(
            cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.label_noise, cfg.noise_seed,
            cfg.augment, cfg.num_classes, cfg.train_size, cfg.test_size), cfg)
        self.corrupted = corruption_sets.for_trial(cfg, d)  # checked now: a bad -C folder fails before training
        torch.manual_seed(cfg.seed)  # model initialisation only; everything later draws from `g`
        self.method = methods.build(cfg, d, self.device, getattr(sink, "endpoint_states", None))
        self.compile_seconds = self.method.compile_now(d.train_x[:cfg.batch_size], d.train_y[:cfg.batch_size]) \
            if cfg.compile else None
        self.g = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.opt = make_optimizer(cfg, self.method.parameters())
        self.n = len(d.train_y)
        self.batch_size = min(cfg.batch_size, self.n)
        self.steps = self.n // self.batch_size  # drop the ragged last batch: BatchNorm needs more than one example
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: self.method.lr_factor(s, self.steps))
        self.records: dict[str, list[dict[str, Any]]] = {"epochs": [], "evals": [], "predictions": [], "weights": []}
        self.best: dict[str, Any] | None = None   # early stopping: the best validation epoch and its state
        fitted = set(SAMPLED_BY_FIT) & set(sampler_list(cfg.samplers))
        self.trajectory = Trajectory(cfg.sampler_checkpoints, self.method.sub.n_params, self.device) \
            if fitted else None
        self.first, self.elapsed = 1, 0.0
        self.diverged_at = 0  # the epoch whose training loss went non-finite (0: none); the trial stops there
        if resume is not None:
            self.method.load_state_dict(resume["model"])
            self.opt.load_state_dict(copy.deepcopy(resume["optimizer"]))  # it would train the given tensors
            self.sched.load_state_dict(resume["scheduler"])
            self.g.set_state(resume["rng"])
            self.records = {k: list(v) for k, v in resume["records"].items()}
            self.best = resume.get("best")
            if self.trajectory is not None:
                self.trajectory.load(resume["trajectory"])
            self.first, self.elapsed = resume["epoch"] + 1, resume["elapsed"]
        self.prior = self.elapsed

    def epochs(self) -> range:
        return range(self.first, self.cfg.epochs + 1)

    def start_epoch(self, epoch: int) -> torch.Tensor:
        """Reset the epoch's sums; returns this epoch's batch order."""
        self.t0 = time.time()
        torch.manual_seed(self.cfg.seed * 1_000_003 + epoch)  # dropout's global RNG: a function of (seed, epoch)
        self.method.train()
        zero = torch.zeros((), device=self.device)
        self.sums = {"loss": zero.clone(), "reg": zero.clone(), "correct": zero.clone(), "seen": 0}
        return torch.randperm(self.n, generator=self.g, device=self.device)

    def batch(self, perm: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
        x, y = datasets.rows(self.data.train_x, idx), datasets.rows(self.data.train_y, idx)  # faster than x[idx]
        return datasets.augment_batch(x, self.data.augment, self.g), y

    def step(self, s: Step) -> None:
        """After a step's backward: step the optimizer, then record the step."""
        self.opt.step()
        self.record(s)

    def record(self, s: Step) -> None:
        """Advance the schedule and add up the step's numbers (a pack steps its trials' optimizers at once)."""
        self.lr = self.opt.param_groups[0]["lr"]  # the rate this step used (logged: the epoch's last)
        self.sched.step()
        self.sums["loss"] += s.loss
        self.sums["reg"] += s.reg
        self.sums["correct"] += s.correct
        self.sums["seen"] += s.seen

    def end_epoch(self, epoch: int) -> None:
        """Everything after an epoch's steps: validation (and early stopping), trajectory predictions and
        weights, the epoch row, the checkpoint, the sink."""
        cfg, d, method = self.cfg, self.data, self.method
        row: dict[str, Any] = dict(epoch=epoch, lr=self.lr, train_loss=float(self.sums["loss"]) / self.steps,
                                   train_acc=float(self.sums["correct"]) / self.sums["seen"],
                                   reg=float(self.sums["reg"]) / self.steps, val_acc=None, val_nll=None)
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["reg"])):
            # Diverged: a result, not an error. Keep this epoch's row and stop; nothing after it (validation,
            # a checkpoint of NaN weights, the final evaluation) would mean anything.
            self.diverged_at = epoch
            seconds = time.time() - self.t0
            self.elapsed += seconds
            self.records["epochs"].append({**row, "seconds": seconds, "samples_per_s": None})
            if self.sink is not None:
                self.sink.progress(self.records["epochs"][-1], None)
            return
        method.end_epoch(epoch)
        validate = bool(cfg.eval_every and epoch % cfg.eval_every == 0 and len(d.val_y))
        if validate or cfg.epoch_predictions:
            vp = method.val_point()
            xs = {"val": d.val_x} if validate else {}
            if cfg.epoch_predictions and epoch < cfg.epochs:  # the last epoch's come from the final evaluation
                xs["test"] = d.test_x
            probs = method.predict(vp, xs)
            if validate:
                m = classification_metrics(probs["val"], d.val_y, cfg.ece_bins)
                row.update(val_acc=m["accuracy"], val_nll=m["nll"])
                value = m[cfg.early_stop_metric]
                if cfg.early_stop and better(cfg.early_stop_metric, value, self.best):
                    self.best = dict(epoch=epoch, value=value,
                                     state={k: v.clone() for k, v in method.state_dict().items()})
            if "test" in xs:
                self.records["predictions"].append(dict(
                    epoch=epoch, split="test", point=vp.name, kind=vp.kind, n_classes=d.classes,
                    probs=probs["test"].cpu(), labels=d.test_y.int().cpu()))
        if self.trajectory is not None:
            self.trajectory.add(method.flat(method.solution()))
        if cfg.weight_projection:
            self.records["weights"] += weight_rows(cfg, method, epoch)
        seconds = time.time() - self.t0
        self.elapsed += seconds
        row.update(seconds=seconds, samples_per_s=self.steps * self.batch_size / seconds)
        self.records["epochs"].append(row)
        state = None
        if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            state = self.state(epoch)
        if self.sink is not None:
            self.sink.progress(row, state)

    def state(self, epoch: int) -> dict[str, Any]:
        """The whole trial state, as copies: a sink may hold it while training goes on."""
        return dict(epoch=epoch, model={k: v.clone() for k, v in self.method.state_dict().items()},
                    optimizer=copy.deepcopy(self.opt.state_dict()), scheduler=self.sched.state_dict(),
                    rng=self.g.get_state(), records={k: list(v) for k, v in self.records.items()},
                    elapsed=self.elapsed, best=self.best,
                    trajectory=self.trajectory.state() if self.trajectory is not None else None)

    def finish(self) -> dict[str, list[dict[str, Any]]]:
        """The final evaluation and the trials row; the sink gets every row of the trial."""
        cfg, method = self.cfg, self.method
        status, error = "completed", ""
        chance = chance_accuracy(self.data.test_y)
        untrained: bool | None = False  # a diverged trial is not "at chance": it has no final evaluation
        if self.diverged_at:
            status, error = "diverged", f"non-finite training loss at epoch {self.diverged_at}"
        else:
            evals, preds = evaluate(cfg, method, self.data, self.g, cfg.epochs, self.best, self.trajectory,
                                    self.corrupted)
            self.records["evals"] += evals
            self.records["predictions"] += preds
            self.records["probes"] = probes(cfg, method, self.data, cfg.epochs)
            acc = main_test_accuracy(evals, method.main)
            untrained = None if acc is None or chance is None else at_chance(acc, chance)
        finished = time.time()
        self.records["trials"] = [trial_row(
            cfg.to_dict(), name="", status=status, error=error, started_at=self.started, finished_at=finished,
            seconds=self.prior + finished - self.started, ran_on=str(self.device), n_params=method.sub.n_params,
            label_noise_actual=self.data.noise_actual, main_point=method.main, main_ensemble=method.ensemble,
            best_epoch=self.best["epoch"] if self.best else None, diverged_epoch=self.diverged_at or None,
            at_chance=untrained, chance_accuracy=chance, compile_seconds=self.compile_seconds,
            corruption_generator=self.corrupted.record if self.corrupted else "")]
        if self.sink is not None:
            self.sink.finish(self.records)
        return self.records


def run_trial(cfg: TrialConfig, sink: Sink | None = None,
              resume: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train and evaluate one trial. `resume` is a state dict that an earlier run handed to its sink."""
    run = Run(cfg, sink, resume)
    for epoch in run.epochs():
        perm = run.start_epoch(epoch)
        for i in range(run.steps):
            x, y = run.batch(perm, i)
            run.opt.zero_grad(set_to_none=True)
            run.step(run.method.train_step(x, y, run.g))
        run.end_epoch(epoch)
        if run.diverged_at:
            break
    return run.finish()
