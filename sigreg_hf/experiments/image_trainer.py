"""The app's trainer: :class:`~sigreg_hf.trainer.SIGRegTrainer` plus a training top-1 metric and the fast path's
on-device augmentation."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from sigreg_hf.experiments.data import dominant_label_top1
from sigreg_hf.experiments.data.batch_augment import BatchAugmentation
from sigreg_hf.experiments.data.mixing import ImageClassificationCollator
from sigreg_hf.experiments.data.transforms import ROW_COLUMN, AugmentationClock
from sigreg_hf.experiments.optim import build_lr_scheduler, build_optimizer
from sigreg_hf.soft_targets import logits_of
from sigreg_hf.trainer import SIGRegTrainer

if TYPE_CHECKING:
    from sigreg_hf.experiments.train_args import OptimArguments

logger = logging.getLogger(__name__)

__all__ = ["ImageClassificationTrainer"]

#: Separates the on-device augmentation's random stream from the collator's mixing stream (both keyed by rows).
_AUGMENTATION_STREAM = 0x5A17


class ImageClassificationTrainer(SIGRegTrainer):
    """:class:`SIGRegTrainer` that also logs training top-1 and says what it measures.

    Without mixing it logs ``train_top1`` (percent, on the augmented training batches). With
    CutMix/MixUp a batch has no single true label, so it logs ``train_top1_vs_dominant_label``: the share
    of predictions equal to the largest-weight label of each mixed target. The metric stays on the device
    until the Trainer logs (no host synchronisation per step).

    ``task_loss_scale`` multiplies the training loss of a ``sigreg_mode="none"`` run (the reference's
    baselines trained ``(1 - a) * CE``); evaluation losses stay unscaled.

    Fast path: with ``batch_augmentation`` the training batches arrive as uint8 images (and their rows); each
    is augmented on the training device (keyed by ``clock``, the process and the batch's rows, so a resumed run
    is exact) and, with a ``device_mixer``, mixed there (its ``mix_batch``; the Trainer's count of label
    elements is scaled to the soft targets' width, as for batches mixed by the collator). ``channels_last``
    puts 4-D training inputs in channels-last layout.

    ``optim_args`` (the recipe's optimiser and schedule): :meth:`create_optimizer` and :meth:`create_scheduler`
    build them from it and ``args``, through the Trainer's own hooks, so one code path serves every engine (DDP;
    FSDP, where the Trainer calls them after sharding; DeepSpeed's initialisation). Without it the Trainer's
    ``optim`` / ``lr_scheduler_type`` apply.
    """

    def __init__(
        self,
        *args: Any,
        train_metric_name: str = "train_top1",
        task_loss_scale: float = 1.0,
        batch_augmentation: BatchAugmentation | None = None,
        device_mixer: ImageClassificationCollator | None = None,
        clock: AugmentationClock | None = None,
        channels_last: bool = False,
        optim_args: OptimArguments | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.optim_args = optim_args
        self.train_metric_name = train_metric_name
        if not (math.isfinite(task_loss_scale) and task_loss_scale > 0):
            raise ValueError(f"task_loss_scale must be a positive finite number, got {task_loss_scale!r}.")
        if task_loss_scale != 1.0 and self.sigreg_mode != "none":
            raise ValueError(
                f"task_loss_scale={task_loss_scale} applies to sigreg_mode 'none' only; with "
                f"sigreg_mode={self.sigreg_mode!r} the convex weighting already scales the task loss by "
                "1 - sigreg_alpha. Set --task_loss_scale 1."
            )
        if device_mixer is not None and batch_augmentation is None:
            raise ValueError("device_mixer mixes batches augmented on the device: give batch_augmentation too.")
        self.task_loss_scale = task_loss_scale
        self.batch_augmentation = batch_augmentation
        self.device_mixer = device_mixer
        self.clock = clock
        self.channels_last = channels_last

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The recipe's optimiser (:func:`~sigreg_hf.experiments.optim.build_optimizer`) when ``optim_args`` is set."""
        if self.optimizer is None and self.optim_args is not None:
            if self.optim_args.optimizer == "muon" and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
                logger.warning(
                    "Muon under FSDP/DeepSpeed is unverified (sharded engines may not apply Muon's update to "
                    "whole matrices); prefer DDP (multi_gpu.yaml) for Muon recipes."
                )
            target = self.model if model is None else model
            self.optimizer = build_optimizer(target, **self.optim_args.optimizer_options(self.args))
        return super().create_optimizer(model)

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The recipe's schedule (:func:`~sigreg_hf.experiments.optim.build_lr_scheduler`: per-epoch cosine per
        parameter group, warmup) when ``optim_args`` is set."""
        if self.lr_scheduler is None and self.optim_args is not None:
            steps_per_epoch, _, horizon = self.optim_args.schedule_steps(self.args, len(self.train_dataset))
            if self.optim_args.lr_schedule_epochs is None:
                horizon = num_training_steps  # the run's own length, as the Trainer counts it
            self.lr_scheduler = build_lr_scheduler(
                self.optimizer if optimizer is None else optimizer,
                schedule=self.optim_args.lr_schedule,
                total_steps=horizon,
                steps_per_epoch=steps_per_epoch,
                interval=self.optim_args.lr_schedule_interval,
                eta_min=self.optim_args.eta_min,
                warmup_steps=self.args.get_warmup_steps(num_training_steps),
            )
            self._created_lr_scheduler = True  # a later train() call builds it afresh, as the Trainer's own
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self.batch_augmentation is not None:
            inputs, num_items_in_batch = self.augment_on_device(inputs, num_items_in_batch)
        elif self.channels_last and inputs.get("pixel_values") is not None and inputs["pixel_values"].ndim == 4:
            inputs = {**inputs, "pixel_values": inputs["pixel_values"].contiguous(memory_format=torch.channels_last)}
        return super().training_step(model, inputs, num_items_in_batch)

    def augment_on_device(self, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[dict[str, Any], Any]:
        """uint8 batch -> augmented, normalised (and mixed) batch on the training device.

        The random draws are made on the CPU from a generator keyed by (clock seed, epoch, process, rows), or
        from torch's CPU stream without a clock, so they cost no device synchronisation.
        """
        inputs = dict(inputs)
        rows = inputs.pop(ROW_COLUMN, None)  # a list of ints from the collator (never moved to the device)
        if isinstance(rows, torch.Tensor):
            rows = rows.tolist()
        pixels = inputs["pixel_values"]
        if pixels.dtype != torch.uint8:
            raise ValueError(
                f"device augmentation expects uint8 training images, got {pixels.dtype}: build the data with "
                "prepare_image_classification_data(DataArguments(..., device_augmentation=True))."
            )
        if self.clock is not None and rows is not None:
            seed = self.clock.key(_AUGMENTATION_STREAM, self.args.process_index, *rows)
        else:
            seed = int(torch.randint(0, 2**62, (1,)))  # torch's CPU stream (seeded by the Trainer)
        inputs = self._prepare_inputs(inputs)
        pixels = self.batch_augmentation(inputs["pixel_values"], seed=seed)
        labels = inputs["labels"]
        if self.device_mixer is not None:
            pixels, labels = self.device_mixer.mix_batch(pixels, labels, rows)
            if num_items_in_batch is not None:  # counted on class ids; a soft target row has num_classes elements
                num_items_in_batch = num_items_in_batch * labels.shape[-1]
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        inputs["pixel_values"], inputs["labels"] = pixels, labels
        return inputs, num_items_in_batch

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
