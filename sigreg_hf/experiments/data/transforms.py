"""Image transforms (torchvision.transforms.v2), mean/std presets, and the lazy batch transform.

Train: RandomCrop(size, padding) + RandomHorizontalFlip (+ RandAugment(n, m)) + float conversion +
normalise. Eval: float conversion + normalise. Both run on uint8 CHW tensors, whether they come from the
decoded-image cache (:mod:`sigreg_hf.experiments.data.cache`) or from PIL images decoded on the fly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

#: The mean/std values the paper's notebooks used (``cifar100_full``: the ResNet18 and first-round ViT
#: notebooks, full precision; ``cifar100_peak``: the Peak ViT and MLP notebooks; ``cifar100``: the former
#: rounded to 4 places), plus CIFAR-10's and ImageNet's.
MEAN_STD_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cifar100_full": (
        (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
        (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
    ),
    "cifar100_peak": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

#: Column names produced by the decoded-image cache.
PIXELS_COLUMN = "pixels"
HEIGHT_COLUMN = "height"
WIDTH_COLUMN = "width"

#: Key added to every training example so that the collator mixes training batches only (the Trainer uses
#: one collator for training and evaluation). Never present on evaluation examples.
MIX_MARKER = "_mix"


def resolve_mean_std(
    preset: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return ``(mean, std)`` from explicit values or a preset name in :data:`MEAN_STD_PRESETS`."""
    if mean is not None or std is not None:
        if mean is None or std is None or len(mean) != 3 or len(std) != 3:
            raise ValueError(f"Give both mean and std with 3 values each (got mean={mean}, std={std}).")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {std}.")
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if preset is None:
        raise ValueError("Give a mean/std preset name or explicit mean and std.")
    if preset not in MEAN_STD_PRESETS:
        raise ValueError(f"Unknown mean/std preset {preset!r}; choose one of {sorted(MEAN_STD_PRESETS)}.")
    return MEAN_STD_PRESETS[preset]


def build_train_transform(
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop_size: int = 32,
    padding: int = 4,
    hflip: bool = True,
    randaugment_num_ops: int = 0,
    randaugment_magnitude: int = 9,
    normalize: bool = True,
) -> v2.Compose:
    """Train transform for uint8 CHW tensors: crop + flip (+ RandAugment) + to float + normalise.

    ``randaugment_num_ops=0`` leaves RandAugment out; the paper's ViT rows use ``(2, 9)``. ``normalize=False``
    stops at the augmented uint8 image (then :func:`build_eval_transform` does the rest, e.g. on a whole batch).
    """
    steps: list[Callable[..., Any]] = []
    if padding > 0 or crop_size:
        steps.append(v2.RandomCrop(crop_size, padding=padding if padding > 0 else None))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment_num_ops > 0:
        steps.append(v2.RandAugment(num_ops=randaugment_num_ops, magnitude=randaugment_magnitude))
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


def build_eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Eval transform for uint8 CHW tensors (one image or a ``[B, 3, H, W]`` batch): to float + normalise."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))])


def pil_to_uint8_chw(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """RGB uint8 CHW tensor from a PIL image, resized (shorter side) and centre-cropped to ``size``."""
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        scale = size / min(image.size)
        new = (max(size, round(image.size[0] * scale)), max(size, round(image.size[1] * scale)))
        image = image.resize(new, Image.BILINEAR)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def cached_to_uint8_chw(pixels: bytes, height: int, width: int) -> torch.Tensor:
    """uint8 CHW tensor from one row of the decoded-image cache (HWC bytes)."""
    array = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


#: Column holding each training row's position, so that its augmentation can be keyed by it.
ROW_COLUMN = "__row__"


@dataclass
class AugmentationClock:
    """The run seed and the current epoch, shared by the training transform and the collator.

    Augmentation randomness is a function of ``(seed, epoch, row)`` instead of a position in torch's global
    random stream, so a resumed run draws exactly what the uninterrupted run drew (the Trainer restores its
    RNG only after the first resumed batch was fetched) whatever the number of DataLoader workers.
    :class:`AugmentationEpochCallback` advances ``epoch``.
    """

    seed: int
    epoch: int = 0

    def key(self, *parts: int) -> int:
        """A 63-bit seed for ``(seed, epoch, *parts)``."""
        text = "|".join(str(int(p)) for p in (self.seed, self.epoch, *parts))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


class ImageBatchTransform:
    """The function given to ``Dataset.with_transform``: rows -> ``pixel_values`` / ``labels``.

    Reads either the decoded-image cache columns (``pixels``/``height``/``width``) or a PIL image column,
    applies ``transform`` per image (fresh randomness on every access, so every epoch differs; ``None``: none),
    then ``batch_transform`` (deterministic, e.g. to float + normalise) once to the stacked images, and,
    when ``mark_for_mixing`` is true, tags each example with :data:`MIX_MARKER` for the collator.
    With a ``clock`` (and the :data:`ROW_COLUMN` in the data), each image's randomness is seeded by
    ``(seed, epoch, row)`` inside a forked RNG, leaving torch's global stream untouched; the row is passed on
    for the collator.
    """

    def __init__(
        self,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        *,
        image_column: str,
        label_column: str,
        image_size: int | None = None,
        mark_for_mixing: bool = False,
        clock: AugmentationClock | None = None,
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.transform = transform if transform is not None else _identity
        self.batch_transform = batch_transform
        self.clock = clock
        self.image_column = image_column
        self.label_column = label_column
        self.image_size = image_size
        self.mark_for_mixing = mark_for_mixing

    def _images(self, batch: dict[str, list[Any]]) -> list[torch.Tensor]:
        if PIXELS_COLUMN in batch:
            heights, widths = set(batch[HEIGHT_COLUMN]), set(batch[WIDTH_COLUMN])
            if len(heights) == 1 and len(widths) == 1:  # one copy for the whole batch
                h, w = heights.pop(), widths.pop()
                flat = np.frombuffer(bytearray().join(batch[PIXELS_COLUMN]), dtype=np.uint8)
                return list(torch.from_numpy(flat).reshape(-1, h, w, 3).permute(0, 3, 1, 2))
            return [
                cached_to_uint8_chw(p, h, w)
                for p, h, w in zip(batch[PIXELS_COLUMN], batch[HEIGHT_COLUMN], batch[WIDTH_COLUMN], strict=True)
            ]
        if self.image_column not in batch:
            raise KeyError(
                f"Image column {self.image_column!r} missing from the batch (columns: {list(batch)})."
            )
        return [pil_to_uint8_chw(img, self.image_size) for img in batch[self.image_column]]

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        images = self._images(batch)
        out: dict[str, list[Any]] = {"labels": [int(y) for y in batch[self.label_column]]}
        if self.clock is None:
            out["pixel_values"] = [self.transform(img) for img in images]
            if ROW_COLUMN in batch:  # passed on for augmentation keyed later (on the training device)
                out[ROW_COLUMN] = [int(r) for r in batch[ROW_COLUMN]]
        else:
            if ROW_COLUMN not in batch:
                raise KeyError(f"Keyed augmentation needs the {ROW_COLUMN!r} column (see add_row_column).")
            rows = [int(r) for r in batch[ROW_COLUMN]]
            pixel_values = []
            with torch.random.fork_rng(devices=[]):
                for img, row in zip(images, rows, strict=True):
                    # the CPU generator only: torch.manual_seed also seeds every accelerator's generator (which
                    # fork_rng(devices=[]) does not restore) and costs ~35x more per image
                    torch.default_generator.manual_seed(self.clock.key(row))
                    pixel_values.append(self.transform(img))
            out["pixel_values"] = pixel_values
            out[ROW_COLUMN] = rows
        if self.batch_transform is not None:
            shapes = {tuple(p.shape) for p in out["pixel_values"]}
            if len(shapes) == 1:  # rows of one tensor: datasets hands each example its row
                out["pixel_values"] = self.batch_transform(torch.stack(out["pixel_values"]))
            else:
                out["pixel_values"] = [self.batch_transform(p) for p in out["pixel_values"]]
        if self.mark_for_mixing:
            out[MIX_MARKER] = [True] * len(images)
        return out


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image
