"""Advance the augmentation clock with the Trainer's epochs (exact resume with random augmentation)."""

from __future__ import annotations

import math

import datasets
import numpy as np
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from sigreg_hf.experiments.data.transforms import ROW_COLUMN, AugmentationClock

__all__ = ["AugmentationEpochCallback", "add_row_column"]


def add_row_column(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with :data:`ROW_COLUMN` = each row's position (the key of its augmentation randomness)."""
    if ROW_COLUMN in dataset.column_names:
        return dataset
    if dataset._indices is not None:  # a select()ed view: materialise it so the new column lines up
        dataset = dataset.flatten_indices()
    return dataset.add_column(ROW_COLUMN, np.arange(len(dataset), dtype=np.int64))


class AugmentationEpochCallback(TrainerCallback):
    """Set ``clock.epoch`` to the Trainer's epoch at the start of every epoch (also the resumed one).

    The Trainer calls ``on_epoch_begin`` before it creates the epoch's DataLoader iterator, so every batch of
    an epoch, in the main process or in (non-persistent) workers, sees that epoch.
    """

    def __init__(self, clock: AugmentationClock, *, workers_use_clock: bool = True) -> None:
        self.clock = clock
        #: False when augmentation runs in the main process (device augmentation): persistent workers are fine.
        self.workers_use_clock = workers_use_clock

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.workers_use_clock and args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
            raise ValueError(
                "Keyed augmentation needs the workers to see each new epoch: use dataloader_persistent_workers=False "
                "(the default), device_augmentation=True or keyed_augmentation=False."
            )

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.clock.epoch = int(math.floor((state.epoch or 0.0) + 1e-9))
