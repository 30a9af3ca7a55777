"""One trial's configuration: a flat dataclass, so any field can be a sweep axis.

Defaults are the embedded default (digits, small MLP line); `preset` fills in a paper's recipe and
explicit fields still win over it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainers import corruption_params, patterns
from trainers.data_files import TEST_SIZES, TRAIN_SIZES

SHAPES = ("point", "line", "curve", "simplex")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "tiny_imagenet", "synthetic_cifar10")
MODELS = ("mlp", "cnn", "cresnet20", "wrn28_10", "cnn6")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
# How weights are parametrised, trained and evaluated: one module per method in trainers/methods/ (the
# registry there is the one place that names them). The names are repeated here so validation needs no torch.
METHODS = ("subspace", "independent", "swa", "mimo", "mpo", "hyperplane", "connect")
# Fields that belong to one method: for any other method they keep their defaults, so a sweep that crosses
# `method` with them folds duplicates (one subspace trial, not one per swa_lr) and trial names skip them.
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "swa": ("swa_start", "swa_lr", "swa_cycle"),
    "mimo": ("mimo_heads", "mimo_repeat_prob", "mimo_batch_repeats"),
    "mpo": ("mpo_pattern", "mpo_size", "mpo_fill", "mpo_mask_seed", "mpo_cells", "mpo_cap", "mpo_scale",
            "mpo_chunk", "mpo_margin", "mpo_eval_examples"),
    "hyperplane": ("hyperplane_dim", "hyperplane_radius"),
    "connect": ("connect_endpoints", "connect_points"),
}
# Packed trials (trainers/pack.py): trials that differ only in these fields can train as one batched pack,
# when their method's step is "draw coefficients, cross-entropy there, + beta cos^2". `extra` holds free-form
# tags (and the test hooks), never anything the computation depends on.
PACK_FREE = ("seed", "noise_seed", "label_noise", "extra")
PACKABLE_METHODS = ("subspace", "swa")
# Fort et al.'s samplers around one solution (evaluation, any method): see trainers/samplers.py.
SAMPLERS = ("random", "dropout", "gaussian", "pca")
EARLY_STOP_METRICS = ("accuracy", "nll")

# Paper recipes as data. Fields given explicitly in a config override these.
PRESETS: dict[str, dict[str, Any]] = {
    # Wortsman et al. 2021, CIFAR-10 cResNet20: SGD 0.1/0.9, wd 1e-4, batch 128, 160 epochs,
    # cosine with 5 warm-up epochs, crop(32, pad 4) + flip.
    "subspaces": dict(
        optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128, epochs=160,
        schedule="cosine", warmup_epochs=5, augment=True, model="cresnet20", width=16,
    ),
    # Skorokhodov & Burtsev: Adam lr 3e-4, batch 512.
    "loss_patterns": dict(optimizer="adam", lr=3e-4, weight_decay=0.0, batch_size=512, schedule="constant",
                          warmup_epochs=0),
}


@dataclass
class TrialConfig:
    # what is trained
    method: str = "subspace"       # subspace | independent | swa | mimo | mpo (trainers/methods/)
    shape: str = "line"            # point | line | curve | simplex
    endpoints: int = 2             # simplex vertices m; set to 2 for a line/curve and 1 for a point
    layerwise: bool = False        # every layer draws its own coordinates
    beta: float = 1.0              # weight of the cos^2 endpoint regulariser (paper: 1)
    # data
    dataset: str = "digits"
    data_dir: str = "~/.cache/basin/data"
    download: bool = False         # torchvision downloads are opt-in: clusters often have no internet
    val_fraction: float = 0.1      # held out from train, before noise, for model selection
    augment: bool = False          # crop(pad 4) + flip for CIFAR, crop for SVHN, nothing for the rest
    label_noise: float = 0.0       # symmetric noise on train labels only
    noise_seed: int = 0            # noise has its own seed so seeds and noise cross independently
    train_size: int = 0            # a class-stratified subset of N training images (0 = all), drawn before the
    #                                validation split (which comes out of it) and before label noise; the same
    #                                subset for every trial of a study, as the validation split is
    test_size: int = 0             # a class-stratified subset of N test images (0 = all), the same for every trial
    # model
    model: str = "mlp"
    width: int = 16                # cresnet20 base width; mlp hidden = 8 * width
    batchnorm: bool = True
    dropout: float = 0.0
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 1
    epochs: int = 20
    batch_size: int = 64
    seed: int = 0
    # evaluation
    alpha_grid: int = 21           # points on the alpha grid of a line/curve (paper: 0..1 by 0.05)
    simplex_grid: int = 6          # barycentric grid divisions for m = 3 (6 -> 28 points)
    ensemble_samples: int = 5      # k random subspace points evaluated and ensembled
    ece_bins: int = 15
    bn_batches: int = 0            # train batches for BN recomputation; 0 = a full pass
    eval_every: int = 1            # validation at the centre every N epochs (0 = never)
    save_predictions: bool = True  # per-point test probabilities, for analysis
    epoch_predictions: bool = False  # test probabilities at the centre after every epoch (trajectories)
    weight_projection: int = 0     # if > 0, record a fixed random projection of the weights per epoch
    early_stop: bool = False       # also evaluate the state of the best validation epoch, as point early_stop
    early_stop_metric: str = "accuracy"  # accuracy (highest) | nll (lowest) on the validation split
    # samples around the trained solution (Fort et al.), each a point with BN recomputed; comma-separated
    # subset of random, dropout, gaussian, pca ("all" for every one); ensemble_samples of each
    samplers: str = ""
    sampler_radius: float = 0.1    # random: distance from the solution, as a fraction of its weight norm
    sampler_dropout: float = 0.1   # dropout: fraction of weights zeroed (the rest scaled by 1 / (1 - p))
    sampler_checkpoints: int = 10  # gaussian, pca: fitted on the solution's weights at the last N epochs
    sampler_rank: int = 5          # pca: rank of the low-rank Gaussian (at most sampler_checkpoints - 1)
    sampler_floor: float = 0.0     # keep only samples with validation accuracy >= this (0 = keep all)
    # swa (Izmailov et al.): shape point; a high constant or a cyclic learning rate, weights averaged
    swa_start: int = 0             # epochs of ordinary training before averaging (0 = the first 3/4)
    swa_lr: float = 0.05           # the constant SWA learning rate, or the low end of each cycle
    swa_cycle: int = 0             # 0 = constant LR, collect every epoch; c = cycles of c epochs from lr
    #                                down to swa_lr, collect at each cycle's end
    # mimo (Havasi et al.): shape point; M subnetworks in one network, M inputs stacked on channels
    mimo_heads: int = 3            # M (paper: 3 on CIFAR-10)
    mimo_repeat_prob: float = 0.0  # input repetition probability: share of a batch all heads see alike
    mimo_batch_repeats: int = 4    # each example appears this many times per batch (paper: 4)
    # corruptions (evaluation data, any method; docs/corruptions.md): the final evaluation also scores the main
    # point and the main ensemble's members on corrupted test sets, one evals row per corruption x severity
    corruptions: str = ""          # "" = none, "all", or comma-separated names (gaussian_noise, snow, ...)
    corruption_severities: str = "1,2,3,4,5"  # comma-separated, 1-5 (published MNIST-C has one level: 0)
    corruption_source: str = "generated"  # generated (in torch, any data set) | published (the -C files)
    corruption_dir: str = ""       # published: folder holding CIFAR-10-C/, CIFAR-100-C/, Tiny-ImageNet-C/,
    #                                mnist_c/ as unpacked ("" = data_dir)
    corruption_seed: int = 0       # generated: one seed for every trial, so all see the same images
    # mpo (Skorokhodov & Burtsev): shape point; a plane origin + s*(x*u + y*v) in weight space whose cells
    # follow a binary picture: black cells trained to low loss, white ones to high (trainers/patterns.py)
    mpo_pattern: str = "heart"     # a bundled icon (heart, cross, ring, smiley), "random", or a PNG/PBM path
    mpo_size: int = 0              # cells on the picture's longer side (0 = as drawn); a random mask's side
    mpo_fill: float = 0.5          # random mask: probability that a cell is black
    mpo_mask_seed: int = 0         # random mask: its own seed, so masks and training seeds cross independently
    mpo_cells: int = 50            # cells of each colour per step (paper: 50)
    mpo_cap: float = 2.5           # white cells maximise min(CE, cap) (paper: 2.5)
    mpo_scale: float = 0.1         # initial s, the learnable spacing of cells (paper: 0.1)
    mpo_chunk: int = 16            # cells per vmapped pass: memory against speed (0 = all of a step at once)
    mpo_margin: int = 3            # heat maps: cells evaluated around the picture
    mpo_eval_examples: int = 2000  # heat maps: train and test examples per cell (0 = all)
    # -- landscape probes (trainers/probes.py) and the hyperplane and connect methods (Fort et al.) ---------
    # probes at points of the finished trial, one `probes` row each; BN in eval mode with the point's own statistics
    probes: str = ""               # comma-separated subset of hessian, goldilocks, stiffness ("all" for every one)
    probe_points: str = "main"     # comma-separated points (evals names); main = the trial's main point, or the
    #                                first member of its main ensemble (endpoint_0 for independent)
    probe_examples: int = 1000     # training examples for the Hessian; held-out (test) examples for stiffness
    probe_top_k: int = 10          # top Hessian eigenvalues (Lanczos)
    probe_trace_samples: int = 30  # Hutchinson matrix-vector products for the Hessian's trace
    probe_hyperplane_dim: int = 20  # dimension of the random hyperplane of the Goldilocks measures
    num_classes: int = 0           # keep only the first N classes of the data set (0 = all)
    # hyperplane (Fort & Scherlis; Li et al.): shape point; only d coordinates theta are trained, w = w0 + P theta
    hyperplane_dim: int = 100      # d
    hyperplane_radius: float = 1.0  # w0 = radius x the model's initialisation (so |w0| = radius x |init|)
    # connect (Garipov et al.; Fort & Jastrzebski): shape curve (a learned control point between 2 endpoints) or
    # simplex (connect_points learned vertices shared by the simplices of each endpoint); the endpoints are fixed,
    # finished standard-training trials of the same sweep (trainers/references.py)
    connect_endpoints: str = ""    # their trial keys (k1,k2) or an axis and its values (seed=0,1)
    connect_points: int = 1        # learned vertices (shape curve: 1)
    # runtime
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    amp: bool = False              # bf16 autocast on CUDA; the training images then stay on the GPU in bf16
    channels_last: bool = False    # NHWC inputs and conv weights (tensor-core convolutions; not inside a pack)
    compile: bool = False          # torch.compile the model before training (its time: trials.compile_seconds)
    checkpoint_every: int = 1      # epochs between checkpoints handed to the sink (0 = never)
    preset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # free-form tags carried into the results

    @property
    def n_points(self) -> int:
        """Number of stacked weight tensors: endpoints, plus the control point of a curve."""
        return {"point": 1, "line": 2, "curve": 3, "simplex": self.endpoints}[self.shape]

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain value (`extra` copied). Not dataclasses.asdict: that deep-copies every value,
        and a 100,000-trial sweep calls this a few times per trial."""
        d = dict(self.__dict__)
        d["extra"] = copy.deepcopy(self.extra) if self.extra else {}
        return d

    def key(self) -> str:
        """Stable hash of what determines the numbers (not where data lives or which device runs it). Only
        values that differ from their defaults are hashed, so a field added later (with a default that keeps
        the old behaviour) leaves every earlier trial's key, and so its results, as they were. The price:
        a default must never change its meaning; add a field instead."""
        return config_key(self.to_dict())


def config_key(d: dict[str, Any]) -> str:
    """TrialConfig.key of a config's to_dict()."""
    d = {k: v for k, v in d.items() if k not in _NOT_IN_KEY and v != _DEFAULTS[k]}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


_NOT_IN_KEY = {"data_dir", "download", "device", "checkpoint_every", "corruption_dir"}
FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig)}
_DEFAULTS = TrialConfig().to_dict()


# Fields a shape fixes: such trials share a key (and run once), and sweep trial names leave them out.
CANONICAL: dict[str, dict[str, Any]] = {
    "point": {"endpoints": 1, "layerwise": False},
    "line": {"endpoints": 2},
    "curve": {"endpoints": 2},
}


def irrelevant(cfg: TrialConfig) -> set[str]:
    """Fields that mean nothing for this trial's shape or method."""
    return set(CANONICAL.get(cfg.shape, {})) | _foreign_fields(cfg.method)


@functools.cache
def _foreign_fields(method: str) -> frozenset[str]:
    return frozenset(f for m, names in METHOD_FIELDS.items() if m != method for f in names)


def sampler_list(value: str) -> list[str]:
    """The `samplers` field as a list ("all" = every sampler)."""
    if value.strip() == "all":
        return list(SAMPLERS)
    return [s.strip() for s in value.split(",") if s.strip()]


def corruption_list(c: TrialConfig) -> list[str]:
    """The `corruptions` field as a list ("all" = the source's standard set for the data set)."""
    if c.corruptions.strip() == "all":
        return list(corruption_params.known(c.corruption_source, c.dataset)[0])
    return [s.strip() for s in c.corruptions.split(",") if s.strip()]


def severity_list(c: TrialConfig) -> list[int]:
    """The `corruption_severities` field as a list of ints (unparseable entries become -1, refused by checks)."""
    return [int(s) if s.strip().isdigit() else -1 for s in c.corruption_severities.split(",") if s.strip()]


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the field."""


def type_ok(name: str, value: Any) -> bool:
    """Whether `value` has the type of field `name` (an int is a float; a bool is never a number). The one
    type check of trial fields: make_config and sweep files (orchestrator/sweep.py) use it."""
    default = _DEFAULTS[name]
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def type_name(name: str) -> str:
    """The type of field `name` in words, for messages."""
    default = _DEFAULTS[name]
    return "mapping" if isinstance(default, dict) else type(default).__name__


def make_config(values: dict[str, Any], where: str = "") -> TrialConfig:
    """Build and validate a TrialConfig from plain values (a YAML mapping). Raises ConfigError."""
    prefix = f"{where}." if where else ""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of trial fields, got {type(values).__name__}")
    for name in values:
        if name not in FIELDS:
            raise ConfigError(f"{prefix}{name}: unknown field (known: {', '.join(sorted(FIELDS))})")
    preset = values.get("preset", "")
    if preset and preset not in PRESETS:
        raise ConfigError(f"{prefix}preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    merged = {**PRESETS.get(preset, {}), **values}
    shape = merged.get("shape", TrialConfig.shape)
    merged.update(CANONICAL.get(shape, {}))  # fields that mean nothing for a shape take one value
    for name in _foreign_fields(merged.get("method", TrialConfig.method)):  # ... nor do another method's
        merged.pop(name, None)
    for name, value in merged.items():
        if not type_ok(name, value):
            raise ConfigError(f"{prefix}{name}: expected {type_name(name)}, got {value!r}")
    if merged.get("method") == "mpo" and "mpo_pattern" in merged:  # trials run in their own folders (Ray Tune)
        merged["mpo_pattern"] = patterns.absolute(merged["mpo_pattern"])
    cfg = TrialConfig(**{k: (float(v) if isinstance(_DEFAULTS[k], float) else v) for k, v in merged.items()})
    _check_values(cfg, prefix)
    return cfg


def _check_values(c: TrialConfig, prefix: str) -> None:
    def need(ok: bool, name: str, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{prefix}{name}: expected {expected}, got {getattr(c, name)!r}")

    for name, choices in [("method", METHODS), ("shape", SHAPES), ("dataset", DATASETS), ("model", MODELS),
                          ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)]:
        need(getattr(c, name) in choices, name, f"one of {', '.join(choices)}")
    need(c.endpoints >= 2 or c.shape != "simplex", "endpoints", "at least 2 for a simplex")
    need(c.method != "independent" or c.shape in ("line", "simplex"), "method",
         "'independent' only with shape line or simplex")
    need(0.0 <= c.label_noise < 1.0, "label_noise", "a rate in [0, 1)")
    need(0.0 <= c.val_fraction < 1.0, "val_fraction", "a fraction in [0, 1)")
    need(0.0 <= c.dropout < 1.0, "dropout", "a rate in [0, 1)")
    need(0.0 <= c.label_smoothing < 1.0, "label_smoothing", "a value in [0, 1)")
    need(c.beta >= 0, "beta", "a non-negative number")
    need(c.lr > 0, "lr", "a positive learning rate")
    need(c.weight_decay >= 0, "weight_decay", "a non-negative number")
    need(c.epochs >= 1, "epochs", "at least 1")
    need(c.batch_size >= 1, "batch_size", "at least 1")
    need(c.width >= 1, "width", "at least 1")
    need(0 <= c.warmup_epochs <= c.epochs, "warmup_epochs", f"between 0 and epochs ({c.epochs})")
    need(c.alpha_grid >= 2, "alpha_grid", "at least 2")
    need(c.simplex_grid >= 1, "simplex_grid", "at least 1")
    need(c.ensemble_samples >= 0, "ensemble_samples", "0 or more")
    need(c.ece_bins >= 1, "ece_bins", "at least 1")
    need(c.bn_batches >= 0, "bn_batches", "0 (full pass) or more")
    need(c.eval_every >= 0, "eval_every", "0 or more")
    need(c.checkpoint_every >= 0, "checkpoint_every", "0 or more")
    need(c.weight_projection >= 0, "weight_projection", "0 or more")
    need(c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"), "device",
         "auto, cpu, cuda or cuda:N")
    has_val = c.val_fraction > 0 and c.eval_every > 0
    need(c.early_stop_metric in EARLY_STOP_METRICS, "early_stop_metric", f"one of {', '.join(EARLY_STOP_METRICS)}")
    need(not c.early_stop or has_val, "early_stop",
         "false without a validation split (it needs val_fraction > 0 and eval_every > 0)")
    unknown = [s for s in sampler_list(c.samplers) if s not in SAMPLERS]
    need(not unknown, "samplers", f"a comma-separated subset of {', '.join(SAMPLERS)}, or all")
    samplers = sampler_list(c.samplers)
    need(c.sampler_radius > 0, "sampler_radius", "a positive fraction of the weight norm")
    need(0.0 < c.sampler_dropout < 1.0, "sampler_dropout", "a rate in (0, 1)")
    fitted = {"gaussian", "pca"} & set(samplers)
    need(not fitted or 2 <= c.sampler_checkpoints <= c.epochs, "sampler_checkpoints",
         f"between 2 and epochs ({c.epochs}) for the {' and '.join(sorted(fitted))} sampler")
    need(c.sampler_rank >= 1, "sampler_rank", "at least 1")
    need("pca" not in samplers or c.sampler_rank < c.sampler_checkpoints, "sampler_rank",
         f"below sampler_checkpoints ({c.sampler_checkpoints}): the centred checkpoints span at most "
         f"{c.sampler_checkpoints - 1} directions")
    need(0.0 <= c.sampler_floor <= 1.0, "sampler_floor", "an accuracy in [0, 1]")
    need(c.sampler_floor == 0 or not samplers or has_val, "sampler_floor",
         "0 without a validation split (it needs val_fraction > 0 and eval_every > 0)")
    need(c.ensemble_samples >= 1 or not samplers, "ensemble_samples", "at least 1 to draw samplers' samples")
    # corruptions
    need(c.corruption_source in ("generated", "published"), "corruption_source", "generated or published")
    need(c.corruption_source == "generated" or c.dataset in corruption_params.PUBLISHED, "corruption_source",
         f"generated for dataset {c.dataset} (published -C sets: "
         + ", ".join(f"{v} for {k}" for k, v in corruption_params.PUBLISHED.items()) + ")")
    allowed = corruption_params.known(c.corruption_source, c.dataset)[1]
    need(all(n in allowed for n in corruption_list(c)), "corruptions",
         f"all or a comma-separated subset of {', '.join(allowed)}")
    need(bool(severity_list(c)) and all(1 <= s <= 5 for s in severity_list(c)), "corruption_severities",
         "comma-separated severities from 1 to 5, e.g. '1,2,3,4,5'")
    if c.method in ("swa", "mimo"):
        need(c.shape == "point", "shape", f"point for method {c.method} (it trains one network)")
    if c.method == "swa":
        need(0 <= c.swa_start < c.epochs, "swa_start", f"an epoch before the last ({c.epochs})")
        need(c.warmup_epochs <= swa_start(c), "warmup_epochs", f"at most swa_start ({swa_start(c)}) for method swa")
        need(c.swa_lr > 0, "swa_lr", "a positive learning rate")
        need(c.swa_cycle >= 0, "swa_cycle", "0 (constant learning rate) or a cycle length in epochs")
        need(c.swa_cycle <= c.epochs - swa_start(c), "swa_cycle",
             f"at most the {c.epochs - swa_start(c)} epochs after swa_start, so at least one cycle ends")
    if c.method == "mimo":
        need(c.mimo_heads >= 2, "mimo_heads", "at least 2 subnetworks")
        need(0.0 <= c.mimo_repeat_prob <= 1.0, "mimo_repeat_prob", "a probability in [0, 1]")
        need(c.mimo_batch_repeats >= 1, "mimo_batch_repeats", "at least 1")
        problem = _mimo_problem(c.model, c.dataset, c.width, c.mimo_heads)
        need(not problem, "model", f"a model MIMO can wrap ({problem})")
    if c.method == "mpo":
        need(c.shape == "point", "shape", "point for method mpo (its plane is the method's own)")
        need(0.0 < c.mpo_fill < 1.0, "mpo_fill", "a probability in (0, 1)")
        need(c.mpo_size >= 0, "mpo_size", "0 (as drawn) or a number of cells")
        problem = patterns.problem(c.mpo_pattern, c.mpo_size, c.mpo_fill, c.mpo_mask_seed)
        need(not problem, "mpo_pattern", f"a pattern basin can fit ({problem})")
        need(c.mpo_cells >= 1, "mpo_cells", "at least 1 cell of each colour per step")
        need(c.mpo_cap > 0, "mpo_cap", "a positive cross-entropy")
        need(c.mpo_scale > 0, "mpo_scale", "a positive initial scale")
        need(c.mpo_chunk >= 0, "mpo_chunk", "0 (all cells at once) or more")
        need(c.mpo_margin >= 0, "mpo_margin", "0 or more cells")
        need(c.mpo_eval_examples >= 0, "mpo_eval_examples", "0 (all) or more")
    _check_landscape(c, need)


def swa_start(c: TrialConfig) -> int:
    """Epochs of ordinary training before SWA averages (the field, or the first 3/4 of the epochs)."""
    return c.swa_start or (3 * c.epochs) // 4


@functools.lru_cache(maxsize=64)
def _mimo_problem(model: str, dataset: str, width: int, heads: int) -> str:
    """Why MIMO cannot wrap this model ("" when it can): its first layer must take the M stacked inputs
    and its last give M heads. Built on torch's meta device (no memory, no weights); imports torch, which
    only MIMO configs pay for."""
    from trainers.models import mimo_problem

    return mimo_problem(model, dataset, width, heads)


# -- landscape probes, hyperplane, connect ---------------------------------------------------------------
PROBES = ("hessian", "goldilocks", "stiffness")
DATASET_CLASSES = {"cifar100": 100}  # classes of each data set (10 unless listed)


def probe_list(value: str) -> list[str]:
    """The `probes` field as a list ("all" = every probe)."""
    return list(PROBES) if value.strip() == "all" else [p.strip() for p in value.split(",") if p.strip()]


def probe_point_names(c: TrialConfig) -> list[str]:
    """The points of a trial that probes can visit (each a point of its evaluation with fixed weights)."""
    grid = [f"{i / (c.alpha_grid - 1):.2f}" for i in range(c.alpha_grid)]
    ends = [f"endpoint_{i}" for i in range(c.endpoints)]
    if c.method in ("subspace", "independent") and c.shape != "point":
        k = c.simplex_grid
        tri = [f"simplex_{i}_{j}_{k - i - j}" for i in range(k + 1) for j in range(k + 1 - i)]
        return [*ends, "center", *([f"alpha_{a}" for a in grid] if c.shape in ("line", "curve") else
                                   tri if c.endpoints == 3 else [])]
    if c.method == "connect":
        return [*ends, *(f"control_{j}" for j in range(c.connect_points)), "center", *(f"alpha_{a}" for a in grid),
                *(f"line_{a}" for a in grid)]
    return {"swa": ["swa", "point"], "hyperplane": ["point", "origin"]}.get(c.method, ["point"])


def _short(names: list[str]) -> str:
    """A point list for one line: each grid (alpha_, line_, simplex_) as its first and last name."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.split("_")[0] if n.startswith(("alpha_", "line_", "simplex_")) else n, []).append(n)
    return ", ".join(g[0] if len(g) == 1 else f"{g[0]} .. {g[-1]}" for g in groups.values())


def _check_landscape(c: TrialConfig, need: Callable[[bool, str, str], None]) -> None:
    from trainers.references import syntax_problem

    probes = probe_list(c.probes)
    need(all(p in PROBES for p in probes), "probes", f"a comma-separated subset of {', '.join(PROBES)}, or all")
    need(not probes or c.method != "mimo", "probes", "none for method mimo (its heads share one network)")
    if probes:  # the point names are a few hundred strings: built only for trials that probe
        known = probe_point_names(c)
        missing = [p for p in probe_list(c.probe_points) if p != "main" and p not in known]
        need(not missing, "probe_points",
             f"main or points of this trial ({_short(known)}); there is no {', '.join(missing)}")
    need(not probes or bool(probe_list(c.probe_points)), "probe_points", "at least one point")
    need(c.probe_examples >= 2, "probe_examples", "at least 2")
    need(c.probe_top_k >= 1, "probe_top_k", "at least 1")
    need(c.probe_trace_samples >= 1, "probe_trace_samples", "at least 1")
    need(c.probe_hyperplane_dim >= 2, "probe_hyperplane_dim", "at least 2")
    n_cls = DATASET_CLASSES.get(c.dataset, 10)
    need(c.num_classes == 0 or 2 <= c.num_classes <= n_cls, "num_classes", f"0 (all) or 2 to {n_cls} for {c.dataset}")
    for name, sizes, split in (("train_size", TRAIN_SIZES, "training"), ("test_size", TEST_SIZES, "test")):
        # at least one image per class; at most the split's published size (with num_classes the split is
        # smaller, and the loader refuses a subset larger than what it read, with the count it found)
        classes, most = c.num_classes or n_cls, sizes[c.dataset]
        need(getattr(c, name) == 0 or classes <= getattr(c, name) <= most, name,
             f"0 (all) or {classes} to {most} (the {split} images of {c.dataset}, {classes} classes)")
    if c.method == "hyperplane":
        need(c.shape == "point", "shape", "point for method hyperplane (it trains one network)")
        n = _n_params(c.model, c.dataset, c.width, c.batchnorm, c.num_classes)
        need(1 <= c.hyperplane_dim <= n, "hyperplane_dim", f"between 1 and the model's {n} parameters")
        need(c.hyperplane_radius > 0, "hyperplane_radius", "a positive multiple of the initialisation")
    if c.method == "connect":
        need(c.shape in ("curve", "simplex"), "shape", "curve or simplex for method connect")
        need(not c.layerwise, "layerwise", "false for method connect")
        need(not syntax_problem(c.connect_endpoints, c.endpoints), "connect_endpoints",
             syntax_problem(c.connect_endpoints, c.endpoints))
        need(c.connect_points >= 1 and (c.shape == "simplex" or c.connect_points == 1), "connect_points",
             "1 for a curve, at least 1 for a simplex")


@functools.lru_cache(maxsize=64)
def _n_params(model: str, dataset: str, width: int, batchnorm: bool, num_classes: int) -> int:
    """Parameters of a model, counted on torch's meta device (no memory); only hyperplane configs pay for it."""
    import torch

    from trainers.data import INPUT_SHAPES
    from trainers.models import build

    shape, classes = INPUT_SHAPES[dataset]
    with torch.device("meta"):
        net = build(model, shape, num_classes or classes, width, batchnorm, 0.0)
    return sum(p.numel() for p in net.parameters())


# -- packed trials ----------------------------------------------------------------------------------------
def pack_key(cfg: TrialConfig) -> str:
    """Trials with equal pack keys (and a packable method) can be trained as one pack (trainers/pack.py)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in PACK_FREE and k not in _NOT_IN_KEY}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pack_problem(cfgs: list[TrialConfig]) -> str:
    """Why these trials cannot be one pack ("" when they can)."""
    methods = {c.method for c in cfgs}
    if not methods <= set(PACKABLE_METHODS):
        return f"method {sorted(methods - set(PACKABLE_METHODS))[0]} does not pack (packable: " \
               f"{', '.join(PACKABLE_METHODS)})"
    for name in ("channels_last", "compile"):  # a pack is one vmapped functional model: neither applies
        if any(getattr(c, name) for c in cfgs):
            return f"{name} is not available inside a pack"
    if len({pack_key(c) for c in cfgs}) > 1:
        return f"the trials differ in more than {', '.join(PACK_FREE)}"
    return ""
