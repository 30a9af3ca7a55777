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
from typing import Any

import torch

from trainers import data as datasets
from trainers import methods
from trainers.config import TrialConfig, sampler_list
from trainers.evaluate import evaluate, probes
from trainers.methods.base import Method, lr_factor, recompute_bn
from trainers.metrics import classification_metrics
from trainers.results import Sink, trial_row
from trainers.samplers import SAMPLED_BY_FIT, Trajectory

__all__ = ["lr_factor", "make_optimizer", "pick_device", "projection", "recompute_bn", "run_trial"]

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


# -- the trial --------------------------------------------------------------------------------------------
def run_trial(cfg: TrialConfig, sink: Sink | None = None,
              resume: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train and evaluate one trial. `resume` is a state dict that an earlier run handed to its sink."""
    started = time.time()
    device = pick_device(cfg.device)
    d = datasets.load(cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.label_noise,
                      cfg.noise_seed, cfg.augment, cfg.num_classes).to(device)
    torch.manual_seed(cfg.seed)  # model initialisation only; everything later draws from `g`
    method = methods.build(cfg, d, device, getattr(sink, "endpoint_states", None))
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    opt = make_optimizer(cfg, method.parameters())
    n = len(d.train_y)
    batch = min(cfg.batch_size, n)
    steps = n // batch  # drop the ragged last batch: BatchNorm needs more than one example
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: method.lr_factor(s, steps))
    records: dict[str, list[dict[str, Any]]] = {"epochs": [], "evals": [], "predictions": [], "weights": []}
    best: dict[str, Any] | None = None   # early stopping: the best validation epoch and its state
    fitted = set(SAMPLED_BY_FIT) & set(sampler_list(cfg.samplers))
    trajectory = Trajectory(cfg.sampler_checkpoints, method.sub.n_params, device) if fitted else None
    first, elapsed = 1, 0.0
    if resume is not None:
        method.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        g.set_state(resume["rng"])
        records = {k: list(v) for k, v in resume["records"].items()}
        best = resume.get("best")
        if trajectory is not None:
            trajectory.load(resume["trajectory"])
        first, elapsed = resume["epoch"] + 1, resume["elapsed"]
    prior = elapsed

    for epoch in range(first, cfg.epochs + 1):
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout's global RNG: a function of (seed, epoch)
        method.train()
        loss_sum = torch.zeros((), device=device)
        reg_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        perm = torch.randperm(n, generator=g, device=device)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            x = datasets.augment_batch(d.train_x[idx], d.augment, g)
            opt.zero_grad(set_to_none=True)
            s = method.train_step(x, d.train_y[idx], g)
            opt.step()
            sched.step()
            loss_sum += s.loss
            reg_sum += s.reg
            correct += s.correct
            seen += s.seen
        method.end_epoch(epoch)
        row: dict[str, Any] = dict(epoch=epoch, lr=opt.param_groups[0]["lr"], train_loss=float(loss_sum) / steps,
                                   train_acc=float(correct) / seen, reg=float(reg_sum) / steps,
                                   val_acc=None, val_nll=None)
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
                if cfg.early_stop and better(cfg.early_stop_metric, value, best):
                    best = dict(epoch=epoch, value=value,
                                state={k: v.clone() for k, v in method.state_dict().items()})
            if "test" in xs:
                records["predictions"].append(dict(
                    epoch=epoch, split="test", point=vp.name, kind=vp.kind, n_classes=d.classes,
                    probs=probs["test"].cpu(), labels=d.test_y.int().cpu()))
        if trajectory is not None:
            trajectory.add(method.flat(method.val_point()))
        if cfg.weight_projection:
            records["weights"] += weight_rows(cfg, method, epoch)
        seconds = time.time() - t0
        elapsed += seconds
        row.update(seconds=seconds, samples_per_s=steps * batch / seconds)
        records["epochs"].append(row)
        state = None
        if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            # copies: a sink may hold the state while training goes on
            state = dict(epoch=epoch, model={k: v.clone() for k, v in method.state_dict().items()},
                         optimizer=copy.deepcopy(opt.state_dict()), scheduler=sched.state_dict(),
                         rng=g.get_state(), records={k: list(v) for k, v in records.items()}, elapsed=elapsed,
                         best=best, trajectory=trajectory.state() if trajectory is not None else None)
        if sink is not None:
            sink.progress(row, state)

    evals, preds = evaluate(cfg, method, d, g, cfg.epochs, best, trajectory)
    records["evals"] += evals
    records["predictions"] += preds
    records["probes"] = probes(cfg, method, d, cfg.epochs)
    finished = time.time()
    records["trials"] = [trial_row(cfg.to_dict(), name="", status="completed", error="", started_at=started,
                                   finished_at=finished, seconds=prior + finished - started, ran_on=str(device),
                                   n_params=method.sub.n_params, label_noise_actual=d.noise_actual,
                                   main_point=method.main, main_ensemble=method.ensemble,
                                   best_epoch=best["epoch"] if best else None)]
    if sink is not None:
        sink.finish(records)
    return records
