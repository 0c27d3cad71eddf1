"""Batched training augmentation: the per-image train pipeline applied to a whole uint8 batch at once.

:class:`BatchAugmentation` reproduces, in distribution, what
:func:`~sigreg_hf.experiments.data.transforms.build_train_transform` does to one image at a time in the
DataLoader workers: ``RandomCrop(crop_size, padding)`` -> ``RandomHorizontalFlip()`` -> optional
``RandAugment(num_ops, magnitude)`` on uint8 -> ``ToDtype(float32, scale=True)`` -> ``Normalize(mean, std)``,
but on a ``[B, 3, H, W]`` uint8 batch on whatever device it lives on (CUDA in training, CPU in tests), with
independent randomness per image.

All random parameters are drawn on the CPU from a :class:`torch.Generator` (:meth:`BatchAugmentation.sample_params`),
so the draws are the same whatever the batch's device and need no device synchronisation; they are then
applied in :meth:`BatchAugmentation.apply`:

* crop: the batch is zero-padded once and every image's window is taken with one advanced-indexing gather;
* flip: ``torch.where`` between the batch and its mirrored copy;
* RandAugment: per round, the images are grouped by (op, sign) and each group goes through torchvision's own
  op implementation (``v2.RandAugment._apply_image_or_video_transform``, the code ``v2.RandAugment.forward``
  calls) with the magnitude ``v2.RandAugment`` would use, and is written back with ``index_put_``. Rounds are
  sequential, as in ``v2.RandAugment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["BatchAugmentation", "BatchAugmentationParams"]


@dataclass(frozen=True)
class BatchAugmentationParams:
    """The random parameters of one batch, all CPU tensors.

    Attributes:
        top / left: int64 ``[B]``, each image's crop offset in the padded image (``0..H+2p-crop``).
        flip: bool ``[B]``, whether each image is mirrored left-right.
        ops: int64 ``[num_ops, B]``, per RandAugment round and image, the index of the op in
            :attr:`BatchAugmentation.op_names` (the order of ``v2.RandAugment._AUGMENTATION_SPACE``).
        negate: bool ``[num_ops, B]``, whether the op's magnitude is negated; always ``False`` for the
            unsigned ops (Identity, Posterize, Solarize, AutoContrast, Equalize).
    """

    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    ops: torch.Tensor
    negate: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.top.shape[0])


class BatchAugmentation:
    """Crop + flip (+ RandAugment) + to float + normalise, on a whole uint8 batch with per-image randomness.

    Identical in distribution to ``build_train_transform(mean, std, crop_size=..., padding=..., hflip=...,
    randaugment_num_ops=..., randaugment_magnitude=...)`` applied image by image (not to its draws: the
    per-image pipeline consumes torch's global stream in another order).

    Args:
        mean / std: per-channel normalisation (3 values each, std > 0), as for ``v2.Normalize``.
        crop_size: side of the square output (``v2.RandomCrop(crop_size)``).
        padding: zero padding on every side before cropping (``v2.RandomCrop(padding=...)``, constant 0 fill).
        hflip: mirror each image left-right with probability 0.5.
        randaugment_num_ops: RandAugment rounds per image (0 leaves RandAugment out).
        randaugment_magnitude: magnitude bin in ``0..num_magnitude_bins-1`` (``v2.RandAugment(magnitude=...)``).
        num_magnitude_bins: number of magnitude bins (31, ``v2.RandAugment``'s default).

    Call it as ``aug(images_uint8, seed=...)`` or ``aug(images_uint8, generator=cpu_generator)``; or draw
    parameters with :meth:`sample_params` and apply them with :meth:`apply`.
    """

    def __init__(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        crop_size: int = 32,
        padding: int = 4,
        hflip: bool = True,
        randaugment_num_ops: int = 0,
        randaugment_magnitude: int = 9,
        num_magnitude_bins: int = 31,
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each (got mean={list(mean)}, std={list(std)}).")
        if any(not float(s) > 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}.")
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"crop_size must be a positive int, got {crop_size!r}.")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}.")
        if isinstance(randaugment_num_ops, bool) or not isinstance(randaugment_num_ops, int) or randaugment_num_ops < 0:
            raise ValueError(f"randaugment_num_ops must be a non-negative int, got {randaugment_num_ops!r}.")
        if isinstance(num_magnitude_bins, bool) or not isinstance(num_magnitude_bins, int) or num_magnitude_bins < 2:
            raise ValueError(f"num_magnitude_bins must be an int >= 2, got {num_magnitude_bins!r}.")
        if (
            isinstance(randaugment_magnitude, bool)
            or not isinstance(randaugment_magnitude, int)
            or not 0 <= randaugment_magnitude < num_magnitude_bins
        ):
            raise ValueError(
                f"randaugment_magnitude must be an int in [0, {num_magnitude_bins - 1}] "
                f"(num_magnitude_bins={num_magnitude_bins}), got {randaugment_magnitude!r}."
            )
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.crop_size = crop_size
        self.padding = padding
        self.hflip = bool(hflip)
        self.randaugment_num_ops = randaugment_num_ops
        self.randaugment_magnitude = randaugment_magnitude
        self.num_magnitude_bins = num_magnitude_bins
        # torchvision's own RandAugment: its op table, its op implementations, its interpolation and fill.
        self._randaugment = v2.RandAugment(
            num_ops=randaugment_num_ops, magnitude=randaugment_magnitude, num_magnitude_bins=num_magnitude_bins
        )
        space = self._randaugment._AUGMENTATION_SPACE
        #: The RandAugment op names, in the order of ``v2.RandAugment._AUGMENTATION_SPACE`` (op indices refer here).
        self.op_names: tuple[str, ...] = tuple(space)
        #: Whether each op's magnitude gets a random sign.
        self.op_signed: tuple[bool, ...] = tuple(bool(space[name][1]) for name in self.op_names)
        # The magnitude v2.RandAugment.forward uses for each op, for the (crop_size x crop_size) images it sees.
        magnitudes: list[float] = []
        for name in self.op_names:
            values = space[name][0](num_magnitude_bins, crop_size, crop_size)
            magnitudes.append(0.0 if values is None else float(values[randaugment_magnitude]))
        #: The (positive-sign) magnitude of each op, as ``v2.RandAugment.forward`` computes it.
        self.op_magnitudes: tuple[float, ...] = tuple(magnitudes)
        self._signed_mask = torch.tensor(self.op_signed, dtype=torch.bool)

    @property
    def num_ops(self) -> int:
        """Number of ops in the RandAugment table (14 in torchvision 0.29)."""
        return len(self.op_names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, padding={self.padding}, hflip={self.hflip}, "
            f"randaugment_num_ops={self.randaugment_num_ops}, randaugment_magnitude={self.randaugment_magnitude})"
        )

    def op_magnitude(self, op: int, negate: bool) -> float:
        """The signed magnitude ``v2.RandAugment`` passes to op ``op`` (negated only for signed ops)."""
        magnitude = self.op_magnitudes[op]
        return -magnitude if negate and self.op_signed[op] else magnitude

    # ------------------------------------------------------------------ parameters
    def _check_size(self, height: int, width: int) -> None:
        if height + 2 * self.padding < self.crop_size or width + 2 * self.padding < self.crop_size:
            raise ValueError(
                f"Crop size {self.crop_size} is larger than the padded image size "
                f"({height + 2 * self.padding}, {width + 2 * self.padding}) (image {height}x{width}, "
                f"padding {self.padding})."
            )

    def sample_params(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> BatchAugmentationParams:
        """Draw every random parameter of a batch on the CPU, from ``generator`` (torch's default CPU one if None).

        Crop offsets are uniform in ``[0, H + 2p - crop]`` / ``[0, W + 2p - crop]`` (``v2.RandomCrop``); flips
        are Bernoulli(0.5) (``v2.RandomHorizontalFlip``); per RandAugment round, the op is uniform over the op
        table and the sign of a signed op is negative with probability 0.5 (``v2.RandAugment``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"Parameters are drawn on the CPU: give a CPU torch.Generator, not one on {generator.device}."
            )
        self._check_size(height, width)
        top = torch.randint(0, height + 2 * self.padding - self.crop_size + 1, (batch_size,), generator=generator)
        left = torch.randint(0, width + 2 * self.padding - self.crop_size + 1, (batch_size,), generator=generator)
        if self.hflip:
            flip = torch.rand(batch_size, generator=generator) < 0.5  # v2: no flip when rand >= p
        else:
            flip = torch.zeros(batch_size, dtype=torch.bool)
        rounds = self.randaugment_num_ops
        ops = torch.randint(0, self.num_ops, (rounds, batch_size), generator=generator)
        negate = torch.rand(rounds, batch_size, generator=generator) <= 0.5  # v2: negated when rand <= 0.5
        negate &= self._signed_mask[ops]
        return BatchAugmentationParams(top=top, left=left, flip=flip, ops=ops, negate=negate)

    # ------------------------------------------------------------------ application
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}.")
        if images.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 (0..255, as the per-image pipeline expects before ToDtype), got {images.dtype}."
            )
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
            raise ValueError(f"images must have shape [B, 3, H, W] with B >= 1, got {list(images.shape)}.")
        self._check_size(int(images.shape[2]), int(images.shape[3]))

    def apply(self, images: torch.Tensor, params: BatchAugmentationParams) -> torch.Tensor:
        """Augment ``images`` (uint8 ``[B, 3, H, W]``) with ``params``: float32 normalised ``[B, 3, crop, crop]``."""
        self._check_images(images)
        batch, _, height, width = images.shape
        if params.batch_size != batch:
            raise ValueError(f"params are for a batch of {params.batch_size} images, got {batch}.")
        if params.ops.shape != (self.randaugment_num_ops, batch):
            raise ValueError(
                f"params.ops has shape {list(params.ops.shape)}, expected [{self.randaugment_num_ops}, {batch}]."
            )
        device = images.device
        p, size = self.padding, self.crop_size
        # Crop: pad once (constant 0, like v2.RandomCrop's default), then one gather for every image's window.
        padded = torch.nn.functional.pad(images, (p, p, p, p), mode="constant", value=0) if p > 0 else images
        steps = torch.arange(size, device=device)
        top = params.top.to(device, non_blocking=True)
        left = params.left.to(device, non_blocking=True)
        rows = (top[:, None] + steps)[:, None, :, None]  # [B, 1, size, 1]
        cols = (left[:, None] + steps)[:, None, None, :]  # [B, 1, 1, size]
        b_index = torch.arange(batch, device=device)[:, None, None, None]
        c_index = torch.arange(images.shape[1], device=device)[None, :, None, None]
        out = padded[b_index, c_index, rows, cols]  # [B, 3, size, size]
        # Flip: per image, the mirrored copy or the original.
        if self.hflip:
            flip = params.flip.to(device, non_blocking=True)[:, None, None, None]
            out = torch.where(flip, out.flip(-1), out)
        # RandAugment: rounds in sequence; within a round, one torchvision call per (op, sign) group.
        if self.randaugment_num_ops > 0:
            out = out.contiguous()
            ra = self._randaugment
            for round_ops, round_negate in zip(params.ops.cpu(), params.negate.cpu(), strict=True):
                keys = round_ops * 2 + (round_negate & self._signed_mask[round_ops]).long()
                for key in torch.unique(keys).tolist():
                    op, negate = divmod(int(key), 2)
                    name = self.op_names[op]
                    if name == "Identity":
                        continue
                    index = torch.nonzero(keys == key).flatten().to(device, non_blocking=True)
                    group = ra._apply_image_or_video_transform(
                        out[index],
                        name,
                        self.op_magnitude(op, bool(negate)),
                        interpolation=ra.interpolation,
                        fill=ra._fill,
                    )
                    out.index_put_((index,), group)
        out = F.to_dtype(out, torch.float32, scale=True)
        return F.normalize(out, mean=self.mean, std=self.std)

    def __call__(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None, seed: int | None = None
    ) -> torch.Tensor:
        """Draw parameters on the CPU (from ``generator``, or a generator seeded with ``seed``, or torch's default
        CPU generator) and apply them to ``images`` on their device."""
        if generator is not None and seed is not None:
            raise ValueError("Give either generator or seed, not both.")
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self._check_images(images)
        batch, _, height, width = images.shape
        return self.apply(images, self.sample_params(int(batch), int(height), int(width), generator))
