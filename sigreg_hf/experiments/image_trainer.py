"""The app's trainer: :class:`~sigreg_hf.trainer.SIGRegTrainer` plus a training top-1 metric."""

from __future__ import annotations

import math
from typing import Any

from sigreg_hf.experiments.data import dominant_label_top1
from sigreg_hf.soft_targets import logits_of
from sigreg_hf.trainer import SIGRegTrainer

__all__ = ["ImageClassificationTrainer"]


class ImageClassificationTrainer(SIGRegTrainer):
    """:class:`SIGRegTrainer` that also logs training top-1 and says what it measures.

    Without mixing it logs ``train_top1`` (percent, on the augmented training batches). With
    CutMix/MixUp a batch has no single true label, so it logs ``train_top1_vs_dominant_label``: the share
    of predictions equal to the largest-weight label of each mixed target.

    ``task_loss_scale`` multiplies the training loss of a ``sigreg_mode="none"`` run (the reference's
    baselines trained ``(1 - a) * CE``); evaluation losses stay unscaled.
    """

    def __init__(
        self, *args: Any, train_metric_name: str = "train_top1", task_loss_scale: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.train_metric_name = train_metric_name
        if not (math.isfinite(task_loss_scale) and task_loss_scale > 0):
            raise ValueError(f"task_loss_scale must be a positive finite number, got {task_loss_scale!r}.")
        if task_loss_scale != 1.0 and self.sigreg_mode != "none":
            raise ValueError(
                f"task_loss_scale={task_loss_scale} applies to sigreg_mode 'none' only; with "
                f"sigreg_mode={self.sigreg_mode!r} the convex weighting already scales the task loss by "
                "1 - sigreg_alpha. Set --task_loss_scale 1."
            )
        self.task_loss_scale = task_loss_scale

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        labels = inputs.get("labels")  # read first: with compute_loss_func the Trainer pops them
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training and self.task_loss_scale != 1.0:
            loss = loss * self.task_loss_scale
        if model.training and labels is not None:
            acc = dominant_label_top1(logits_of(outputs).detach(), labels) * 100.0
            self.log_metric(self.train_metric_name, self.accelerator.gather(acc.reshape(1)).mean())
        return (loss, outputs) if return_outputs else loss
