"""Landscape probes at points of a finished trial (Fort et al.'s studies, seed 002), one `probes` row each.

- `hessian`: the Hessian H of the training loss (mean cross-entropy over `probe_examples` training examples,
  as trained: label noise included, no weight decay or label smoothing): its top `probe_top_k` eigenvalues by
  Lanczos (SciPy's `eigsh` on curvlinops' Hessian-vector products) and its trace by Hutchinson's estimator
  (curvlinops, `probe_trace_samples` Rademacher vectors). Fort & Ganguli: about C large outliers, one per class.
- `goldilocks`: H restricted to a random `probe_hyperplane_dim`-dimensional hyperplane through the point,
  H_d = Pᵀ H P with P orthonormal (QR of a Gaussian matrix, the same for every trial of an architecture): all
  its eigenvalues, Tr(H_d)/‖H_d‖ (‖·‖ the Frobenius norm: 0 for a symmetric spectrum, √d when all
  eigenvalues are equal and positive) and the fraction of positive eigenvalues (Fort & Scherlis).
- `stiffness`: per-example gradients gᵢ of the loss on held-out (test) examples (torch.func vmap(grad));
  cosine stiffness cos(gᵢ, gⱼ) and sign stiffness sign(gᵢ·gⱼ), averaged over pairs i ≠ j per pair of classes
  (the class stiffness matrix), within and between classes, and cosine stiffness against the Euclidean distance
  of the inputs (Fort, Nowak & Narayanan).

At every point the weights are set, BatchNorm statistics are recomputed for that point and the network runs in
eval mode (BN uses those statistics, dropout is off), so the loss is one deterministic function of the weights.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from curvlinops import HessianLinearOperator, hutchinson_trace
from curvlinops._torch_base import PyTorchLinearOperator
from scipy.sparse.linalg import eigsh
from torch import nn

from trainers.config import TrialConfig, probe_list
from trainers.data import Data
from trainers.methods.base import Method, Point, refresh_bn

BATCH = 128             # examples per Hessian-vector product batch
COLUMN_BUDGET = 1 << 24  # vectors per batched Hessian product: about this many / (BATCH x weights), 1 to 64
GRAD_CHUNK = 32         # examples per vmap(grad) call
EIG_TOL = 1e-4          # relative accuracy of the Lanczos eigenvalues
DISTANCE_BINS = 10      # equal-count bins of input distance
SEED = 2018             # examples, random vectors and hyperplanes: the same for every trial


class FlatModel(nn.Module):
    """The method's network as a function of one flat weight vector `w` (the probes' only parameter)."""

    def __init__(self, method: Method, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.detach().clone())
        self._method = [method]  # not a submodule: only `w` is a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._method[0]
        m.sub.set_flat(self.w)
        return m.logits(x).float()


class Columns(PyTorchLinearOperator):
    """An operator applied to a few columns at a time (bounded memory for H @ M with many columns)."""

    SELF_ADJOINT = True

    def __init__(self, op: HessianLinearOperator):
        super().__init__(op._in_shape, op._out_shape)
        self.op, self.columns = op, min(64, max(1, COLUMN_BUDGET // (BATCH * op.shape[0])))

    def _matmat(self, X: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat([self.op._matmat([c])[0] for c in X[0].split(self.columns, dim=1)], dim=1)]

    @property
    def device(self) -> torch.device:
        return self.op.device

    @property
    def dtype(self) -> torch.dtype:
        return self.op.dtype


def hessian(model: FlatModel, x: torch.Tensor, y: torch.Tensor) -> Columns:
    """The Hessian of the mean cross-entropy over (x, y) with respect to model.w, as a linear operator."""
    data = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    op = HessianLinearOperator(model, nn.CrossEntropyLoss(), [model.w], data, check_deterministic=False,
                               num_data=len(x))
    return Columns(op)


def top_eigenvalues(H: PyTorchLinearOperator, k: int, seed: int = SEED) -> np.ndarray:
    """The k largest (algebraic) eigenvalues, largest first (Lanczos with implicit restarts: ARPACK)."""
    n = H.shape[0]
    v0 = np.random.default_rng(seed).standard_normal(n)
    vals = eigsh(H.to_scipy(np.float64), k=min(k, n - 1), which="LA", tol=EIG_TOL, v0=v0, return_eigenvectors=False)
    return np.sort(vals)[::-1]


def trace(H: PyTorchLinearOperator, samples: int, seed: int = SEED) -> float:
    """Hutchinson's estimate of Tr(H) from `samples` Rademacher vectors (seeded)."""
    dev = H.device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        return float(hutchinson_trace(H, min(samples, H.shape[0] - 1)))


def hyperplane_basis(n: int, d: int, device: torch.device, seed: int = SEED) -> torch.Tensor:
    """An orthonormal n × d basis of a random d-dimensional subspace (QR of a Gaussian matrix)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    return q.to(device)


def restricted(H: PyTorchLinearOperator, basis: torch.Tensor) -> torch.Tensor:
    """Pᵀ H P (d × d, symmetrised, float64)."""
    hp = (H @ basis.to(H.dtype)).double()
    hd = basis.T @ hp
    return (hd + hd.T) / 2


def goldilocks(hd: torch.Tensor) -> dict[str, Any]:
    """Eigenvalues (largest first), Tr/‖·‖_F and the fraction of positive eigenvalues of a restricted Hessian."""
    eig = torch.linalg.eigvalsh(hd).flip(0)
    return dict(eigenvalues=eig.cpu().tolist(), trace=float(eig.sum()),
                trace_ratio=float(eig.sum() / eig.square().sum().sqrt().clamp_min(1e-30)),
                positive_fraction=float((eig > 0).double().mean()))


def per_example_grads(model: FlatModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, P): the gradient of each example's cross-entropy with respect to model.w."""
    w = model.w.detach()

    def loss(w: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, {"w": w}, (xi[None],))
        return F.cross_entropy(out, yi[None])

    grad = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    return torch.cat([grad(w, x[i:i + GRAD_CHUNK], y[i:i + GRAD_CHUNK]) for i in range(0, len(x), GRAD_CHUNK)])


def pair_stiffness(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) cosine stiffness cos(gᵢ, gⱼ) and sign stiffness sign(gᵢ·gⱼ) of per-example gradients (N, P)."""
    g = grads.double()
    return F.normalize(g, dim=1) @ F.normalize(g, dim=1).T, torch.sign(g @ g.T)


def stiffness(grads: torch.Tensor, y: torch.Tensor, classes: int, x: torch.Tensor,
              bins: int = DISTANCE_BINS) -> dict[str, Any]:
    """Class stiffness matrices (cosine and sign, mean over pairs i ≠ j of each pair of classes), within- and
    between-class means, and cosine stiffness against input distance (equal-count bins)."""
    cos, sign = pair_stiffness(grads)
    n = len(y)
    off = ~torch.eye(n, dtype=torch.bool, device=cos.device)
    onehot = F.one_hot(y, classes).double()

    def per_class(m: torch.Tensor) -> torch.Tensor:
        m = m * off
        pairs = onehot.T @ off.double() @ onehot
        return (onehot.T @ m @ onehot) / pairs.clamp_min(1) + torch.where(pairs > 0, 0.0, float("nan"))

    same = (y[:, None] == y[None, :]) & off
    iu = torch.triu_indices(n, n, 1, device=cos.device)
    dist = torch.cdist(x.flatten(1).double(), x.flatten(1).double())[iu[0], iu[1]]
    pair_cos = cos[iu[0], iu[1]]
    order = dist.argsort()
    chunks = [c for c in order.tensor_split(bins) if len(c)]
    return dict(n_classes=classes, matrix=per_class(cos).float().flatten().cpu(),
                sign_matrix=per_class(sign).float().flatten().cpu(),
                within=float(cos[same].mean()) if same.any() else None,
                between=float(cos[~same & off].mean()) if (~same & off).any() else None,
                distances=torch.stack([dist[c].mean() for c in chunks]).float().cpu(),
                distance_stiffness=torch.stack([pair_cos[c].mean() for c in chunks]).float().cpu())


# -- at the points of a trial -------------------------------------------------------------------------------
def resolve_points(cfg: TrialConfig, method: Method) -> list[Point]:
    """The points named by `probe_points`; `main` is the trial's main point, or the first member of its main
    ensemble. The points come from the method's own evaluation (a private generator: the trial's is untouched)."""
    pts = {p.name: p for p in method.points(torch.Generator(method.sub.W.device).manual_seed(SEED))}
    main = method.main
    if main.startswith("ensemble_"):
        main = next(p.name for p in pts.values() if p.member_of == main.removeprefix("ensemble_"))
    out = []
    for name in probe_list(cfg.probe_points):
        name = main if name == "main" else name
        if name not in pts:
            raise ValueError(f"probe_points: this trial has no point {name}")
        out.append(pts[name])
    return list({p.name: p for p in out}.values())


def examples(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same n examples for every trial (a fixed permutation)."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))[:n].to(x.device)
    return x[idx], y[idx]


def probe_rows(cfg: TrialConfig, method: Method, d: Data, epoch: int) -> list[dict[str, Any]]:
    """One row per probed point and probe (the `probes` table)."""
    kinds = probe_list(cfg.probes)
    if not kinds:
        return []
    train = examples(d.train_x, d.train_y, cfg.probe_examples)
    held = (d.test_x[:cfg.probe_examples], d.test_y[:cfg.probe_examples])
    rows = []
    for p in resolve_points(cfg, method):
        for kind, values, seconds in _probe(cfg, method, p, kinds, train, held, d.classes):
            rows.append(dict(epoch=epoch, point=p.name, kind=p.kind, probe=kind, seconds=seconds, **values))
    return rows


def _probe(cfg: TrialConfig, method: Method, p: Point, kinds: list[str], train: tuple[torch.Tensor, torch.Tensor],
           held: tuple[torch.Tensor, torch.Tensor], classes: int) -> Iterator[tuple[str, dict[str, Any], float]]:
    method.place(p)
    if not method.needs_bn(p):  # the running statistics are the training run's: recompute them for the point
        refresh_bn(method.sub.model, method.logits, method.data.train_x, cfg.batch_size, cfg.bn_batches)
    method.eval()
    model = FlatModel(method, method.flat(p))
    x, y = train
    with torch.no_grad():
        train_loss = float(F.cross_entropy(torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]), y))
    H = hessian(model, x, y) if {"hessian", "goldilocks"} & set(kinds) else None
    n = model.w.numel()
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "hessian":
            values = dict(eigenvalues=top_eigenvalues(H, cfg.probe_top_k).tolist(),
                          trace=trace(H, cfg.probe_trace_samples), loss=train_loss, examples=len(x), dim=n)
        elif kind == "goldilocks":
            basis = hyperplane_basis(n, min(cfg.probe_hyperplane_dim, n), model.w.device)
            values = dict(goldilocks(restricted(H, basis)), loss=train_loss, examples=len(x), dim=len(basis.T))
        else:
            hx, hy = held
            with torch.no_grad():
                held_loss = float(F.cross_entropy(model(hx), hy))
            values = dict(stiffness(per_example_grads(model, hx, hy), hy, classes, hx), loss=held_loss,
                          examples=len(hx), dim=n)
        yield kind, values, time.perf_counter() - t0
