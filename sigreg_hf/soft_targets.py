"""Cross-entropy for classifiers trained on MixUp/CutMix soft targets, as a ``Trainer(compute_loss_func=...)``.

A model's built-in loss switches to BCE for float labels, so mixed targets need their own loss. Pass
:func:`soft_target_loss` when the data is mixed::

    trainer = SIGRegTrainer(..., compute_loss_func=soft_target_loss)

``Trainer`` then pops ``labels``, calls the model without them and hands ``(outputs, labels,
num_items_in_batch)`` to the function; its loss counts as already scaled for gradient accumulation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["logits_of", "soft_target_cross_entropy", "soft_target_loss"]


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over samples of ``-sum_c y_c log softmax(logits)_c`` (computed in float32)."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"soft targets must have the logits' shape [B, num_classes]; got targets {tuple(targets.shape)} "
            f"for logits {tuple(logits.shape)}."
        )
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.to(log_probs.dtype) * log_probs).sum(dim=-1).mean()


def logits_of(outputs: Any) -> Tensor:
    """The logits of a model's outputs: a tensor, a ``ModelOutput``/dict with ``logits``, or a tuple's first item."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    raise ValueError(
        f"cannot find logits in the model's output of type {type(outputs).__name__}: return a tensor, a "
        "ModelOutput with `logits`, or a dict with 'logits'."
    )


def soft_target_loss(outputs: Any, labels: Tensor, num_items_in_batch: Tensor | int | None = None) -> Tensor:
    """Classification loss for ``compute_loss_func``: soft targets ``[B, C]`` or class indices ``[B]``.

    Soft targets (float ``[B, C]``, MixUp/CutMix or one-hot) get ``-sum_c y_c log softmax(logits)_c``, class
    indices (evaluation batches; ``-100`` ignored) the usual cross-entropy, both per sample in float32.

    Without ``num_items_in_batch`` the result is the mean over the micro-batch. With it (the Trainer's count
    of label elements ``!= -100`` over all accumulated micro-batches, and over all processes when
    ``average_tokens_across_devices``) the per-sample sum is divided by the number of samples it stands for,
    so that accumulated micro-batches sum to the full batch's mean. A soft target row has ``C`` elements, so
    that number is ``num_items_in_batch / C``.
    """
    if labels is None:
        raise ValueError("soft_target_loss needs labels: the batch has no 'labels' column.")
    logits = logits_of(outputs).float()
    if labels.is_floating_point():
        if labels.shape != logits.shape:
            raise ValueError(
                f"soft targets must have the logits' shape [B, num_classes]; got targets {tuple(labels.shape)} "
                f"for logits {tuple(logits.shape)}."
            )
        per_sample = -(labels.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(dim=-1)
        elements_per_sample = labels.shape[-1]
        valid = per_sample.numel()
    else:
        flat = labels.reshape(-1).to(logits.device)
        per_sample = F.cross_entropy(logits.reshape(flat.numel(), -1), flat, ignore_index=-100, reduction="none")
        elements_per_sample = 1
        valid = flat.ne(-100).sum()
    if num_items_in_batch is None:
        return per_sample.sum() / torch.as_tensor(valid, device=per_sample.device).clamp(min=1)
    samples = torch.as_tensor(num_items_in_batch, device=per_sample.device, dtype=per_sample.dtype)
    return per_sample.sum() / (samples / elements_per_sample)
