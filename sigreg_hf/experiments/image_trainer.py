"""The app's trainer: :class:`~sigreg_hf.trainer.SIGRegTrainer` plus a training top-1 metric."""

from __future__ import annotations

from typing import Any

from sigreg_hf.experiments.data import dominant_label_top1
from sigreg_hf.trainer import SIGRegTrainer

__all__ = ["ImageClassificationTrainer"]


class ImageClassificationTrainer(SIGRegTrainer):
    """:class:`SIGRegTrainer` that also logs training top-1 and says what it measures.

    Without mixing it logs ``train_top1`` (percent, on the augmented training batches). With
    CutMix/MixUp a batch has no single true label, so it logs ``train_top1_vs_dominant_label``: the share
    of predictions equal to the largest-weight label of each mixed target.
    """

    def __init__(self, *args: Any, train_metric_name: str = "train_top1", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_metric_name = train_metric_name

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        labels = inputs.get("labels")
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        store = getattr(self, "_metrics", {}).get("train")
        if model.training and labels is not None and store is not None:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
            acc = dominant_label_top1(logits.detach(), labels) * 100.0
            store[self.train_metric_name].append(self.accelerator.gather(acc.reshape(1)).mean().item())
        return (loss, outputs) if return_outputs else loss
