"""The registry of methods: the one place that names them. A method is one module here (see base.py for
what it defines); this table maps a config's `method` to its class, imported only when a trial builds it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from trainers.config import TrialConfig
    from trainers.data import Data
    from trainers.methods.base import Method

REGISTRY: dict[str, str] = {
    "subspace": "trainers.methods.subspace:SubspaceMethod",
    "independent": "trainers.methods.independent:Independent",
    "swa": "trainers.methods.swa:SWA",
    "mimo": "trainers.methods.mimo:MIMO",
    "mpo": "trainers.methods.mpo:MPO",
    "hyperplane": "trainers.methods.hyperplane:Hyperplane",
    "connect": "trainers.methods.connect:Connect",
}


def build(cfg: TrialConfig, data: Data, device: torch.device,
          endpoint_states: Callable[[TrialConfig], list[dict]] | None = None) -> Method:
    """The trial's method around a freshly initialised model (torch's global seed decides the init).
    `endpoint_states`: the sink's way to the final states of other trials (methods built on them: connect)."""
    module, _, name = REGISTRY[cfg.method].partition(":")
    return getattr(importlib.import_module(module), name)(cfg, data, device, endpoint_states)
