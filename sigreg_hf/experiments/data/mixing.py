"""Batch collation with CutMix/MixUp for training batches (torchvision.transforms.v2 CutMix / MixUp).

Per training batch, with probability ``prob`` (1.0 in the paper) one of the two is applied: CutMix
(lambda ~ Beta(1, 1), a box pasted from the batch rolled by one, lambda corrected to the box area) with
probability ``switch_prob`` (0.5), else MixUp (lambda ~ Beta(0.8, 0.8)). Labels become soft targets
``float32 [B, num_classes]`` that the trainer's soft cross-entropy consumes; batches left unmixed get
one-hot targets so every training batch has the same label format. Any batch size works (odd sizes,
the final partial batch, even a single example, which mixes with itself and keeps its label).

Only examples tagged with :data:`~sigreg_hf.experiments.data.transforms.MIX_MARKER` (set by the training transform)
are mixed; evaluation batches pass through with integer labels.

Train accuracy under mixing: a mixed batch has no single true label. :func:`dominant_label_top1` scores
predictions against the label with the largest weight in each soft target (the ``lam >= 0.5`` side);
report it as ``train_top1_vs_dominant_label``, never as plain train accuracy.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torchvision.transforms import v2

from sigreg_hf.experiments.data.transforms import MIX_MARKER, ROW_COLUMN, AugmentationClock


def _process_index() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class ImageClassificationCollator:
    """Stack ``pixel_values``/``labels``; mix training batches with CutMix or MixUp when enabled.

    Args:
        num_classes: number of classes (width of the soft targets).
        mix: apply CutMix/MixUp to training batches (examples carrying :data:`MIX_MARKER`).
        mixup_alpha / cutmix_alpha: Beta parameters (0.8 and 1.0 in the paper).
        prob: probability that a training batch is mixed at all.
        switch_prob: probability of CutMix (else MixUp) for a mixed batch.
        seed: when given, mixing draws from its own stream seeded by (seed, process rank, DataLoader worker
            seed), so runs are reproducible and workers/ranks/epochs differ; when None, torch's global RNG.
        clock: when given (and the features carry their :data:`ROW_COLUMN`), each batch's mixing is seeded
            by ``(clock seed, epoch, the batch's rows)``: a resumed run mixes exactly as the uninterrupted one.
        keep_rows: put the features' :data:`ROW_COLUMN` into unmixed batches (a list of ints), for augmentation
            and mixing keyed by row on the training device (the trainer removes it before the model sees it).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mix: bool = False,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        seed: int | None = None,
        clock: AugmentationClock | None = None,
        keep_rows: bool = False,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if not (0.0 <= prob <= 1.0 and 0.0 <= switch_prob <= 1.0):
            raise ValueError(f"prob and switch_prob must lie in [0, 1] (got {prob}, {switch_prob}).")
        if mix and (mixup_alpha <= 0 and cutmix_alpha <= 0):
            raise ValueError("Mixing is on but both mixup_alpha and cutmix_alpha are <= 0.")
        self.num_classes = num_classes
        self.mix = mix
        self.prob = prob
        self.switch_prob = switch_prob if mixup_alpha > 0 else 1.0
        if cutmix_alpha <= 0:
            self.switch_prob = 0.0
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None
        self.seed = seed
        self.clock = clock
        self.keep_rows = keep_rows
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None
        self.last_choice: str | None = None  # "cutmix" | "mixup" | "none" for the latest training batch

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        key = (_process_index(), info.seed if info is not None else -1)
        if self._rng is None or self._rng_key != key:
            digest = hashlib.sha256(f"{self.seed}|{key[0]}|{key[1]}".encode()).digest()
            self._rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            self._rng_key = key
        return self._rng

    def _apply_mix(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clock is not None and rows is not None:
            rng = np.random.default_rng(self.clock.key(_process_index(), *rows))
        elif self.seed is None:
            return self._mix_with_global_rng(pixel_values, labels, float(torch.rand(())))
        else:
            rng = self._generator()
        u = float(rng.random())
        batch_seed = int(rng.integers(0, 2**63 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(batch_seed)  # CPU draws only; accelerator streams untouched
            return self._mix_with_global_rng(pixel_values, labels, u)

    def _mix_with_global_rng(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, u: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if u >= self.prob:
            self.last_choice = "none"
            return pixel_values, torch.nn.functional.one_hot(labels, self.num_classes).float()
        use_cutmix = float(torch.rand(())) < self.switch_prob
        transform = self.cutmix if use_cutmix else self.mixup
        self.last_choice = "cutmix" if use_cutmix else "mixup"
        mixed, soft = transform(pixel_values, labels)
        return mixed, soft.float()

    def mix_batch(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a stacked batch as :meth:`__call__` mixes a training batch: ``(mixed pixels, soft targets)``.

        ``pixel_values`` is ``[B, C, H, W]`` float, ``labels`` int64 ``[B]`` in ``[0, num_classes)``, both on any
        (the same) device; the results stay there, soft targets float32 ``[B, num_classes]`` with rows summing
        to 1 (one-hot when the batch is left unmixed, i.e. with probability ``1 - prob``). The randomness is
        the collator's (keyed by ``rows`` and the clock when both are present, else its seeded stream or
        torch's global RNG) and is drawn on the CPU, so a batch already on an accelerator (e.g. after
        :class:`~sigreg_hf.experiments.data.batch_augment.BatchAugmentation`) mixes exactly as it would on the
        CPU. Applies mixing whatever ``mix`` says; :meth:`__call__` decides whether to call it.
        """
        if pixel_values.ndim < 1 or labels.ndim != 1 or labels.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"Expected pixel_values [B, ...] and labels [B]; "
                f"got {list(pixel_values.shape)} and {list(labels.shape)}."
            )
        if labels.dtype != torch.long:
            raise ValueError(f"labels must be int64 class indices, got {labels.dtype}.")
        if rows is not None and len(rows) != labels.shape[0]:
            raise ValueError(f"Got {len(rows)} rows for a batch of {labels.shape[0]}.")
        return self._apply_mix(pixel_values, labels, rows)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Empty batch.")
        pixel_values = torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])
        labels = torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long)
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"Labels must lie in [0, {self.num_classes}); got min {int(labels.min())}, max {int(labels.max())}."
            )
        is_train = all(f.get(MIX_MARKER, False) for f in features)
        rows = [int(f[ROW_COLUMN]) for f in features] if all(ROW_COLUMN in f for f in features) else None
        if self.mix and is_train:
            pixel_values, soft = self.mix_batch(pixel_values, labels, rows)
            return {"pixel_values": pixel_values, "labels": soft}
        batch = {"pixel_values": pixel_values, "labels": labels}
        if self.keep_rows and rows is not None:
            batch[ROW_COLUMN] = rows  # a list of ints: moving the batch to the device leaves it on the host
        return batch


def dominant_label_top1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max logit equals the dominant (largest-weight) label of ``targets``.

    ``targets`` may be hard labels ``[B]`` (plain top-1) or soft targets ``[B, C]``. Under MixUp/CutMix
    this is *agreement with the dominant label of the mixed target*, not accuracy on clean images.
    """
    pred = logits.argmax(dim=-1)
    ref = targets.argmax(dim=-1) if targets.ndim == 2 else targets
    return (pred == ref).float().mean()
