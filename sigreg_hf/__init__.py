"""sigreg_hf: SIGReg (Sketched Isotropic Gaussian Regularization) for Hugging Face training.

The losses import eagerly (pure torch); the transformers-facing objects are imported on first
use, so ``import sigreg_hf`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from sigreg_hf.losses import SIGRegLoss, draw_projection, draw_sketch, sigreg_strong, sigreg_weak
from sigreg_hf.probes import probe_model, representation_stats

__version__ = "0.1.0"

_LAZY = {
    "SIGRegArguments": "sigreg_hf.config",
    "SIGRegConfig": "sigreg_hf.config",
    "SIGRegMixin": "sigreg_hf.trainer",
    "SIGRegTrainer": "sigreg_hf.trainer",
    "SIGRegulariser": "sigreg_hf.taps",
    "SIGRegMonitorCallback": "sigreg_hf.callbacks",
    "soft_target_loss": "sigreg_hf.soft_targets",
}

__all__ = [
    "SIGRegLoss",
    "draw_projection",
    "draw_sketch",
    "probe_model",
    "representation_stats",
    "sigreg_strong",
    "sigreg_weak",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sigreg_hf' has no attribute {name!r}")
