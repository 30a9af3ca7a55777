"""Plain nn.Modules. Subspaces wrap any of them, so nothing here knows about endpoints."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _norm(channels: int, batchnorm: bool, dim: int = 2) -> nn.Module:
    if not batchnorm:
        return nn.Identity()
    return nn.BatchNorm2d(channels) if dim == 2 else nn.BatchNorm1d(channels)


def mlp(in_shape: tuple[int, ...], classes: int, width: int = 16, batchnorm: bool = True,
        dropout: float = 0.0) -> nn.Module:
    """Two hidden layers of 8*width units (128 at the default width)."""
    hidden = 8 * width
    n_in = 1
    for d in in_shape:
        n_in *= d
    layers: list[nn.Module] = [nn.Flatten()]
    for n in (n_in, hidden):
        layers += [nn.Linear(n, hidden, bias=not batchnorm), _norm(hidden, batchnorm, 1), nn.ReLU(),
                   nn.Dropout(dropout)]
    return nn.Sequential(*layers, nn.Linear(hidden, classes))


def cnn(in_shape: tuple[int, ...], classes: int, width: int = 16, batchnorm: bool = False,
        dropout: float = 0.0) -> nn.Module:
    """The loss-patterns paper's small net: conv 8/32/64 (3x3, each followed by 2x2 max-pool) + MLP 128.
    `width` is unused: the paper fixes the channels."""
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for out in (8, 32, 64):
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=not batchnorm), _norm(out, batchnorm), nn.ReLU()]
        if min(h, w) >= 2:  # 8x8 digits run out of resolution before the third pool
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, 128), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(128, classes))


class _Block(nn.Module):
    """Pre-activation-free basic block of the CIFAR ResNet (He et al. 2016), option-B shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)
        self.bn1 = _norm(c_out, batchnorm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batchnorm)
        self.bn2 = _norm(c_out, batchnorm)
        self.drop = nn.Dropout(dropout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=not batchnorm),
                                          _norm(c_out, batchnorm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.drop(out)))
        return torch.relu(out + self.shortcut(x))


def cresnet20(in_shape: tuple[int, ...], classes: int, width: int = 16, batchnorm: bool = True,
              dropout: float = 0.0) -> nn.Module:
    """CIFAR ResNet-20: 3 stages of 3 basic blocks at width, 2*width, 4*width channels."""
    c = in_shape[0]
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, 1, 1, bias=not batchnorm), _norm(width, batchnorm),
                               nn.ReLU()]
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for i in range(3):
            layers.append(_Block(c_in, c_out, 2 if (stage > 0 and i == 0) else 1, batchnorm, dropout))
            c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))


class _WideBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis 2016): BN-ReLU-conv twice, dropout between."""

    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool, dropout: float):
        super().__init__()
        self.bn1, self.bn2 = _norm(c_in, batchnorm), _norm(c_out, batchnorm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batchnorm)
        self.drop = nn.Dropout(dropout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=not batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if not isinstance(self.shortcut, nn.Identity) else x
        out = self.conv2(self.drop(torch.relu(self.bn2(self.conv1(out)))))
        return out + skip


def wrn28_10(in_shape: tuple[int, ...], classes: int, width: int = 16, batchnorm: bool = True,
             dropout: float = 0.0) -> nn.Module:
    """WRN-28-10: 3 stages of 4 pre-activation blocks at 10x (width, 2*width, 4*width) channels (160, 320,
    640 at the default width 16); MIMO's CIFAR backbone (Havasi et al.), 36.5 M parameters."""
    c = in_shape[0]
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, 1, 1, bias=not batchnorm)]
    c_in = width
    for stage, c_out in enumerate((10 * width, 20 * width, 40 * width)):
        for i in range(4):
            layers.append(_WideBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1, batchnorm, dropout))
            c_in = c_out
    return nn.Sequential(*layers, _norm(c_in, batchnorm), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c_in, classes))


def cnn6(in_shape: tuple[int, ...], classes: int, width: int = 16, batchnorm: bool = False,
         dropout: float = 0.0) -> nn.Module:
    """The loss-patterns paper's BatchNorm-study net: six 3x3 convs of 8/8/32/32/64/64 channels at full
    resolution (BN before each ReLU when `batchnorm`), adaptive average pooling to 4x4, then MLP 128.
    Channels scale with width / 16 (16, the default, is the paper's net; smaller widths for quick runs)."""
    c = in_shape[0]
    layers: list[nn.Module] = []
    for paper in (8, 8, 32, 32, 64, 64):
        out = max(1, paper * width // 16)
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=not batchnorm), _norm(out, batchnorm), nn.ReLU()]
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c * 16, 128), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(128, classes))


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "cresnet20": cresnet20, "wrn28_10": wrn28_10,
                                               "cnn6": cnn6}


def build(name: str, in_shape: tuple[int, ...], classes: int, width: int, batchnorm: bool,
          dropout: float) -> nn.Module:
    return MODELS[name](in_shape, classes, width=width, batchnorm=batchnorm, dropout=dropout)


def mimo_problem(model: str, dataset: str, width: int, heads: int) -> str:
    """Why MIMO cannot wrap `model` on `dataset` ("" when it can). MIMO builds the model for `heads` inputs
    stacked on channels and `heads` x classes outputs; that works when the first parametrised layer takes
    all the stacked channels and the last one gives every head. Checked on the meta device: no memory."""
    from trainers.data import INPUT_SHAPES

    (c, h, w), classes = INPUT_SHAPES[dataset]
    with torch.device("meta"):
        net = build(model, (heads * c, h, w), heads * classes, width, False, 0.0)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        return f"{model} has no convolution or linear layer"
    first, last = layers[0], layers[-1]
    takes = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
    wanted = heads * c if isinstance(first, nn.Conv2d) else heads * c * h * w
    if takes != wanted:
        return f"{model}'s first layer takes {takes} inputs, not the {wanted} of {heads} stacked inputs"
    if not isinstance(last, nn.Linear) or last.out_features != heads * classes:
        return f"{model}'s last layer does not give {heads} heads of {classes} classes"
    return ""
