"""The paper's CIFAR models as Hugging Face models, a timm-like registry, and Auto-class registration.

Importing this package registers the four model types with ``AutoConfig`` and
``AutoModelForImageClassification``, so that ``AutoModelForImageClassification.from_pretrained(folder)``
loads a saved sigreg model. It also marks the classes with ``register_for_auto_class``, so that
``save_pretrained`` copies the modelling files next to the weights and writes ``auto_map``: the folder
(or a Hub repo uploaded from it) then loads with ``trust_remote_code=True`` where ``sigreg_hf`` is not
installed (torch, torchvision, timm and transformers are still needed).

==================  ===========================  =================================================
registry name       model type                   class
==================  ===========================  =================================================
``resnet18_cifar``  ``sigreg-resnet18-cifar``    :class:`SigregResNetCifarForImageClassification`
``vit_rope``        ``sigreg-vit-rope``          :class:`SigregViTRopeForImageClassification`
``vit_peak``        ``sigreg-vit-peak``          :class:`SigregViTPeakForImageClassification`
``mlp``             ``sigreg-mlp``               :class:`SigregMLPForImageClassification`
==================  ===========================  =================================================

Example::

    from sigreg_hf.models import create_model
    model = create_model("mlp", num_classes=10, image_size=8, in_chans=1)
"""

from __future__ import annotations

import fnmatch
from typing import Any

from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig

from .configuration_sigreg import (
    SigregMLPConfig,
    SigregResNetCifarConfig,
    SigregViTPeakConfig,
    SigregViTRopeConfig,
)
from .mlp import SigregMLPForImageClassification
from .modeling_common import SigregPreTrainedModel
from .resnet_cifar import SigregResNetCifarForImageClassification
from .vit import SigregViTPeakForImageClassification, SigregViTRopeForImageClassification

__all__ = [
    "MODEL_REGISTRY",
    "SigregMLPConfig",
    "SigregMLPForImageClassification",
    "SigregPreTrainedModel",
    "SigregResNetCifarConfig",
    "SigregResNetCifarForImageClassification",
    "SigregViTPeakConfig",
    "SigregViTPeakForImageClassification",
    "SigregViTRopeConfig",
    "SigregViTRopeForImageClassification",
    "create_config",
    "create_model",
    "list_models",
    "register_auto_classes",
]

MODEL_REGISTRY: dict[str, tuple[type[PretrainedConfig], type[SigregPreTrainedModel]]] = {
    "resnet18_cifar": (SigregResNetCifarConfig, SigregResNetCifarForImageClassification),
    "vit_rope": (SigregViTRopeConfig, SigregViTRopeForImageClassification),
    "vit_peak": (SigregViTPeakConfig, SigregViTPeakForImageClassification),
    "mlp": (SigregMLPConfig, SigregMLPForImageClassification),
}
"""Registry name -> (config class, model class)."""

_BY_MODEL_TYPE = {config_cls.model_type: name for name, (config_cls, _) in MODEL_REGISTRY.items()}


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registry names matching a shell-style ``pattern`` (e.g. ``"vit_*"``)."""
    return sorted(name for name in MODEL_REGISTRY if fnmatch.fnmatch(name, pattern))


def _resolve(name: str) -> str:
    key = _BY_MODEL_TYPE.get(name, name)
    if key not in MODEL_REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}. Available: {', '.join(list_models())} "
            f"(or their model types {', '.join(sorted(_BY_MODEL_TYPE))})."
        )
    return key


def create_config(name: str, num_classes: int | None = None, **overrides: Any) -> PretrainedConfig:
    """The config of registry model ``name`` (or its ``sigreg-*`` model type) with ``overrides``.

    Args:
        name: a name from :func:`list_models` or a model type such as ``"sigreg-mlp"``.
        num_classes: number of classes (sets ``num_labels``; default 100, CIFAR-100).
        overrides: any config field, e.g. ``image_size=8, in_chans=1, hidden_size=64``.
    """
    config_cls, _ = MODEL_REGISTRY[_resolve(name)]
    if num_classes is not None:
        if overrides.get("num_labels") not in (None, num_classes):
            raise ValueError(
                f"num_classes={num_classes} conflicts with num_labels={overrides['num_labels']}; pass one."
            )
        overrides["num_labels"] = num_classes
    return config_cls(**overrides)


def create_model(name: str, num_classes: int | None = None, **overrides: Any) -> SigregPreTrainedModel:
    """A randomly initialised registry model (see :func:`create_config` for the arguments)."""
    config = create_config(name, num_classes=num_classes, **overrides)
    _, model_cls = MODEL_REGISTRY[_resolve(name)]
    return model_cls(config)


def register_auto_classes() -> None:
    """Register every model type with the Auto classes and for code export (idempotent; run at import)."""
    for config_cls, model_cls in MODEL_REGISTRY.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForImageClassification.register(config_cls, model_cls, exist_ok=True)
        config_cls.register_for_auto_class()
        model_cls.register_for_auto_class("AutoModelForImageClassification")


register_auto_classes()
