"""One trial's configuration: a flat dataclass, so any field can be a sweep axis.

Defaults are the embedded default (digits, small MLP line); `preset` fills in a paper's recipe and
explicit fields still win over it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

SHAPES = ("point", "line", "curve", "simplex")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")
MODELS = ("mlp", "cnn", "cresnet20")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
# subspace: train the shape (one random point per batch); independent: train every endpoint as its own
# standard model (line or simplex), so the shape's evaluation measures the barrier between them.
METHODS = ("subspace", "independent")

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
    method: str = "subspace"
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
    # runtime
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    amp: bool = False              # bf16 autocast on CUDA
    checkpoint_every: int = 1      # epochs between checkpoints handed to the sink (0 = never)
    preset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # free-form tags carried into the results

    @property
    def n_points(self) -> int:
        """Number of stacked weight tensors: endpoints, plus the control point of a curve."""
        return {"point": 1, "line": 2, "curve": 3, "simplex": self.endpoints}[self.shape]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable hash of what determines the numbers (not where data lives or which device runs it)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_KEY}
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


_NOT_IN_KEY = {"data_dir", "download", "device", "checkpoint_every"}
FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig)}


# Fields a shape fixes: such trials share a key (and run once), and sweep trial names leave them out.
CANONICAL: dict[str, dict[str, Any]] = {
    "point": {"endpoints": 1, "layerwise": False},
    "line": {"endpoints": 2},
    "curve": {"endpoints": 2},
}


def irrelevant(cfg: TrialConfig) -> set[str]:
    """Fields that mean nothing for this trial's shape."""
    return set(CANONICAL.get(cfg.shape, {}))


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the field."""


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


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
    defaults = TrialConfig()
    for name, value in merged.items():
        default = getattr(defaults, name)
        if not _type_ok(value, default):
            raise ConfigError(f"{prefix}{name}: expected {type(default).__name__}, got {value!r}")
    cfg = TrialConfig(**{k: (float(v) if isinstance(getattr(defaults, k), float) else v) for k, v in merged.items()})
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
