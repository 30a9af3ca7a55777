"""One trial, start to finish: a plain function of a config and a sink (no Ray, no MLflow).

All randomness after model initialisation comes from one torch.Generator on the data's device (batch
order, augmentation, subspace draws, regulariser pairs), and its state is in every checkpoint, so a trial
resumed from a checkpoint gives the same numbers as one that never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from trainers import data as datasets
from trainers.config import TrialConfig
from trainers.metrics import classification_metrics
from trainers.models import build
from trainers.results import Sink, trial_row
from trainers.subspace import Subspace

EVAL_BATCH = 1024
PROJECTION_SEED = 20211  # one fixed projection for every trial, so weights stay comparable across trials


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to zero (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def make_optimizer(cfg: TrialConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# -- evaluation -------------------------------------------------------------------------------------------
@torch.no_grad()
def recompute_bn(sub: Subspace, c: torch.Tensor, x: torch.Tensor, batch: int, max_batches: int = 0) -> None:
    """Reset BatchNorm statistics and re-estimate them at point c as a cumulative average over training
    data (no augmentation). Without this, every point but the trained one is evaluated with wrong stats."""
    bns = [m for m in sub.model.modules() if isinstance(m, _BatchNorm)]
    if not bns:
        return
    sub.set_point(c)
    sub.model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()          # only BN layers: dropout stays off
    n_batches = math.ceil(len(x) / batch)
    for i in range(min(n_batches, max_batches) if max_batches else n_batches):
        sub.model(x[i * batch:(i + 1) * batch])
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    sub.model.eval()


@torch.no_grad()
def predict(sub: Subspace, c: torch.Tensor, x: torch.Tensor, amp: bool) -> torch.Tensor:
    """Test-time probabilities at point c (float32, on x's device)."""
    sub.model.eval()
    sub.set_point(c)
    out = []
    for i in range(0, len(x), EVAL_BATCH):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
            out.append(sub.model(x[i:i + EVAL_BATCH]).float().softmax(1))
    return torch.cat(out)


def center_name(cfg: TrialConfig) -> str:
    """Standard training has one point, named "point"; a subspace's centre is "center"."""
    return "point" if cfg.shape == "point" else "center"


Point = tuple[str, str, float | None, torch.Tensor]  # name, kind, alpha, coefficients


def standard_points(cfg: TrialConfig, sub: Subspace, g: torch.Generator) -> list[Point]:
    """(name, kind, alpha, coefficients) of every point a finished trial is evaluated at."""
    if cfg.shape == "point":
        return [(center_name(cfg), "center", None, sub.center())]
    line = cfg.shape in ("line", "curve")
    pts = [(f"endpoint_{i}", "endpoint", (float(i) if line else None), sub.endpoint(i)) for i in range(sub.n_endpoints)]
    pts.append(("center", "center", 0.5 if line else None, sub.center()))
    if line:
        grid = [i / (cfg.alpha_grid - 1) for i in range(cfg.alpha_grid)]
        pts += [(f"alpha_{a:.2f}", "alpha", a, sub.at_alpha(a)) for a in grid]
    if cfg.shape == "simplex" and cfg.endpoints == 3:
        k = cfg.simplex_grid
        for i in range(k + 1):
            for j in range(k + 1 - i):
                bary = torch.tensor([i, j, k - i - j], dtype=torch.float32, device=sub.W.device) / k
                pts.append((f"simplex_{i}_{j}_{k - i - j}", "simplex", None, bary))
    pts += [(f"sample_{i}", "sample", None, sub.draw(g)) for i in range(cfg.ensemble_samples)]
    return pts


def evaluate(cfg: TrialConfig, sub: Subspace, d: datasets.Data, g: torch.Generator, epoch: int) -> tuple[list, list]:
    """The standard evaluation of a trial: rows for the evals and predictions tables."""
    evals, preds = [], []
    needs_bn = sub.W.shape[0] > 1  # a point's running statistics are its own; subspace points need new ones
    cache: dict[tuple, dict[str, torch.Tensor]] = {}
    members: dict[str, list[torch.Tensor]] = {"endpoints": [], "samples": []}

    def emit(name: str, kind: str, alpha: float | None, coords: torch.Tensor | None, probs: dict, n: int) -> None:
        for split, p in probs.items():
            y = getattr(d, f"{split}_y")
            evals.append(dict(epoch=epoch, split=split, point=name, kind=kind, alpha=alpha,
                              coords=None if coords is None else coords.float().cpu(), members=n,
                              corruption="", severity=0, **classification_metrics(p, y, cfg.ece_bins)))
        if cfg.save_predictions:
            preds.append(dict(epoch=epoch, split="test", point=name, kind=kind, n_classes=d.classes,
                              probs=probs["test"].cpu(), labels=d.test_y.int().cpu()))

    for name, kind, alpha, c in standard_points(cfg, sub, g):
        key = tuple(c.flatten().tolist())
        if key not in cache:
            if needs_bn:
                recompute_bn(sub, c, d.train_x, cfg.batch_size, cfg.bn_batches)
            splits = [s for s in ("test", "val") if len(getattr(d, f"{s}_y"))]
            cache[key] = {s: predict(sub, c, getattr(d, f"{s}_x"), cfg.amp) for s in splits}
        emit(name, kind, alpha, c, cache[key], 1)
        if kind in ("endpoint", "sample"):
            members[kind + "s"].append(cache[key])
    for group, ms in members.items():
        if len(ms) >= 2:  # ensembles average probabilities, never logits
            emit(f"ensemble_{group}", "ensemble", None, None,
                 {s: torch.stack([m[s] for m in ms]).mean(0) for s in ms[0]}, len(ms))
    return evals, preds


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


def weight_rows(cfg: TrialConfig, sub: Subspace, epoch: int) -> list[dict[str, Any]]:
    pts = [(center_name(cfg), sub.center())] if cfg.shape == "point" else \
        [(f"endpoint_{i}", sub.endpoint(i)) for i in range(sub.n_endpoints)] + [("center", sub.center())]
    rows = []
    with torch.no_grad():
        for name, c in pts:
            w = sub.weights(c)
            rows.append(dict(epoch=epoch, point=name, norm=float(w.norm()),
                             projection=projection(w, cfg.weight_projection)))
    return rows


# -- the trial --------------------------------------------------------------------------------------------
def run_trial(cfg: TrialConfig, sink: Sink | None = None,
              resume: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train and evaluate one trial. `resume` is a state dict that an earlier run handed to its sink."""
    started = time.time()
    device = pick_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    d = datasets.load(cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.label_noise,
                      cfg.noise_seed, cfg.augment).to(device)
    torch.manual_seed(cfg.seed)  # model initialisation only; everything later draws from `g`
    sub = Subspace(lambda: build(cfg.model, d.in_shape, d.classes, cfg.width, cfg.batchnorm, cfg.dropout),
                   cfg.shape, cfg.endpoints, cfg.layerwise).to(device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    opt = make_optimizer(cfg, sub.parameters())
    n = len(d.train_y)
    batch = min(cfg.batch_size, n)
    steps = n // batch  # drop the ragged last batch: BatchNorm needs more than one example
    total, warmup = steps * cfg.epochs, steps * cfg.warmup_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.schedule))
    records: dict[str, list[dict[str, Any]]] = {"epochs": [], "evals": [], "predictions": [], "weights": []}
    first, elapsed = 1, 0.0
    if resume is not None:
        sub.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        g.set_state(resume["rng"])
        records = {k: list(v) for k, v in resume["records"].items()}
        first, elapsed = resume["epoch"] + 1, resume["elapsed"]
    prior = elapsed

    independent = cfg.method == "independent"
    endpoints = [sub.endpoint(i) for i in range(sub.n_endpoints)]
    regularise = cfg.beta > 0 and sub.n_endpoints > 1 and not independent
    autocast = (lambda: torch.autocast(device.type, torch.bfloat16)) if amp else contextlib.nullcontext
    for epoch in range(first, cfg.epochs + 1):
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout's global RNG: a function of (seed, epoch)
        sub.train()
        loss_sum = torch.zeros((), device=device)
        reg_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        perm = torch.randperm(n, generator=g, device=device)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            x = datasets.augment_batch(d.train_x[idx], d.augment, g)
            y = d.train_y[idx]
            opt.zero_grad(set_to_none=True)
            points = endpoints if independent else [sub.draw(g)]
            for c in points:  # a subspace: one random point; independent: every endpoint, its own loss
                sub.set_point(c)  # fp32, outside autocast: endpoints mixed at full precision
                with autocast():
                    logits = sub.model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                if regularise:
                    reg = cfg.beta * sub.cos2(g)
                    (loss + reg).backward()
                    reg_sum += reg.detach()
                else:
                    loss.backward()
                loss_sum += loss.detach() / len(points)
                correct += (logits.argmax(1) == y).sum() / len(points)
            opt.step()
            sched.step()
        row: dict[str, Any] = dict(epoch=epoch, lr=opt.param_groups[0]["lr"], train_loss=float(loss_sum) / steps,
                                   train_acc=float(correct) / (steps * batch), reg=float(reg_sum) / steps,
                                   val_acc=None, val_nll=None)
        center = sub.center()
        if (cfg.eval_every and epoch % cfg.eval_every == 0 and len(d.val_y)) or cfg.epoch_predictions:
            if sub.W.shape[0] > 1:
                recompute_bn(sub, center, d.train_x, batch, cfg.bn_batches)
            if cfg.eval_every and epoch % cfg.eval_every == 0 and len(d.val_y):
                m = classification_metrics(predict(sub, center, d.val_x, amp), d.val_y, cfg.ece_bins)
                row.update(val_acc=m["accuracy"], val_nll=m["nll"])
            if cfg.epoch_predictions and epoch < cfg.epochs:  # the last epoch's come from the final evaluation
                records["predictions"].append(dict(
                    epoch=epoch, split="test", point=center_name(cfg), kind="center", n_classes=d.classes,
                    probs=predict(sub, center, d.test_x, amp).cpu(), labels=d.test_y.int().cpu()))
        if cfg.weight_projection:
            records["weights"] += weight_rows(cfg, sub, epoch)
        seconds = time.time() - t0
        elapsed += seconds
        row.update(seconds=seconds, samples_per_s=steps * batch / seconds)
        records["epochs"].append(row)
        state = None
        if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            # copies: a sink may hold the state while training goes on
            state = dict(epoch=epoch, model={k: v.clone() for k, v in sub.state_dict().items()},
                         optimizer=copy.deepcopy(opt.state_dict()), scheduler=sched.state_dict(),
                         rng=g.get_state(), records={k: list(v) for k, v in records.items()}, elapsed=elapsed)
        if sink is not None:
            sink.progress(row, state)

    evals, preds = evaluate(cfg, sub, d, g, cfg.epochs)
    records["evals"] += evals
    records["predictions"] += preds
    finished = time.time()
    records["trials"] = [trial_row(cfg.to_dict(), name="", status="completed", error="", started_at=started,
                                   finished_at=finished, seconds=prior + finished - started, ran_on=str(device),
                                   n_params=sub.n_params, label_noise_actual=d.noise_actual)]
    if sink is not None:
        sink.finish(records)
    return records
