"""Pieces shared by the four model families: base class, loss, input checks and default init.

Imports only torch and transformers (plus sibling files through ``from .x import y``), so that
``save_pretrained`` can copy it next to a checkpoint for ``trust_remote_code`` loading.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

try:  # transformers >= 5: init functions that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers, used only by remote-code loading
    from torch.nn import init

__all__ = [
    "SigregPreTrainedModel",
    "check_pixel_values",
    "classification_loss",
    "init",
    "torch_default_init_",
]


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of ``logits [B, K]`` against hard integer ``labels [B]``.

    With ``num_items_in_batch`` (passed by the transformers Trainer under gradient accumulation) the
    summed loss is divided by it, so that accumulated micro-batches give the full-batch mean.

    Raises:
        ValueError: for floating-point (soft / one-hot) labels, which the models deliberately do not
            interpret; compute soft-target cross-entropy from ``outputs.logits`` instead (with a
            Trainer: ``compute_loss_func=sigreg_hf.soft_target_loss``), or pass ``labels=None``.
    """
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be integer class indices of shape [batch], got dtype {labels.dtype} and shape "
            f"{tuple(labels.shape)}. Soft (MixUp/CutMix) targets are not handled by the model: call it "
            "without labels and compute the soft-target cross-entropy from outputs.logits (with a Trainer: "
            "compute_loss_func=sigreg_hf.soft_target_loss)."
        )
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape [batch] = [{logits.shape[0]}], got {tuple(labels.shape)}.")
    labels = labels.to(device=logits.device, dtype=torch.long)
    if num_items_in_batch is None:
        return F.cross_entropy(logits, labels)
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(logits.device)
    return F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch


def check_pixel_values(pixel_values: torch.Tensor, in_chans: int, image_size: int | None, model_name: str) -> None:
    """Raise a ValueError naming the expected shape when ``pixel_values`` does not fit the config."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
        raise ValueError(f"{model_name} expects pixel_values of shape [B, C, H, W], got {shape}.")
    _, c, h, w = pixel_values.shape
    if c != in_chans:
        raise ValueError(
            f"{model_name} was configured with in_chans={in_chans} but pixel_values have {c} channels; "
            "set in_chans in the config (e.g. 1 for greyscale) or convert the images."
        )
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(
            f"{model_name} was configured with image_size={image_size} but pixel_values are {h}x{w}; "
            "set image_size in the config or resize the images."
        )


def torch_default_init_(module: nn.Module) -> None:
    """PyTorch's own default init of an ``nn.Linear`` / ``nn.Conv2d`` (kaiming-uniform(a=sqrt(5)) weight,
    uniform(+-1/sqrt(fan_in)) bias), written with init functions that skip already-loaded tensors."""
    weight = module.weight
    init.kaiming_uniform_(weight, a=math.sqrt(5))
    if getattr(module, "bias", None) is not None:
        fan_in = weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(module.bias, -bound, bound)


class SigregPreTrainedModel(PreTrainedModel):
    """Base of the sigreg image classifiers.

    Subclasses set ``sigreg_tap_patterns`` (regexes, matched with ``re.fullmatch`` against
    ``named_modules()`` names) and ``sigreg_tap_pooling`` ("mean" | "none" | ...), read by
    ``SIGRegulariser`` in its "auto" mode; each tapped module returns a plain tensor.
    """

    main_input_name = "pixel_values"
    base_model_prefix = "sigreg"
    supports_gradient_checkpointing = False
    sigreg_tap_patterns: ClassVar[list[str]] = []
    sigreg_tap_pooling: ClassVar[str] = "auto"

    def sigreg_tap_names(self) -> list[str]:
        """Names of the modules that ``sigreg_tap_patterns`` select, in forward order."""
        patterns = [re.compile(p) for p in self.sigreg_tap_patterns]
        return [name for name, _ in self.named_modules() if any(p.fullmatch(name) for p in patterns)]

    def _classifier_output(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        hidden_states: tuple[torch.Tensor, ...] | None,
        return_dict: bool | None,
        kwargs: dict[str, Any],
    ) -> ImageClassifierOutput | tuple:
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, kwargs.get("num_items_in_batch"))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            out = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + out) if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def _want_hidden_states(self, output_hidden_states: bool | None) -> bool:
        if output_hidden_states is None:
            return bool(self.config.output_hidden_states)
        return bool(output_hidden_states)
