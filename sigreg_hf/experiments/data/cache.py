"""Decoded-image cache, class-balanced subsets and dataset mean/std.

:func:`decode_images` decodes every image once into uint8 HWC bytes stored in Arrow through
``Dataset.map`` (which ``datasets`` caches on disk next to the source Arrow files, keyed by a fingerprint),
so that an epoch reads raw pixels instead of re-decoding JPEG/PNG files. Augmentation still runs per
access, on the decoded pixels, so it stays random per epoch.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from PIL import Image

from sigreg_hf.experiments.data.transforms import HEIGHT_COLUMN, PIXELS_COLUMN, WIDTH_COLUMN, pil_to_uint8_chw


def read_labels(dataset: datasets.Dataset, label_column: str) -> np.ndarray:
    """The label column as an int64 array, read through Arrow (no per-row Python; honours ``select``).

    Raises:
        ValueError: a label is missing (null) or not an integer; the message names the first such row.
    """
    column = dataset.with_format("arrow")[label_column]
    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py())
        raise ValueError(f"Label column {label_column!r} has a missing (null) label at row {row}.")
    try:
        return np.asarray(column.to_numpy(zero_copy_only=False)).astype(np.int64, casting="safe")
    except TypeError as err:
        raise ValueError(
            f"Label column {label_column!r} holds {column.type} values; integer class ids are needed."
        ) from err


def check_label_range(labels: np.ndarray, num_classes: int, *, split: str, label_column: str) -> None:
    """Raise a ValueError naming the first row whose label is negative or ``>= num_classes``."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"Split {split!r}, row {row}: label {int(labels[row])} in column {label_column!r} is outside "
            f"0..{num_classes - 1} ({bad.size} such rows). Labels must be class ids 0..num_classes-1."
        )


class _DecodeBatch:
    """``Dataset.map`` function: images -> uint8 HWC bytes (module-level class so the cache key is stable).

    Cells of an ``Image`` column arrive undecoded (``{"bytes", "path"}``) and are decoded here by that column's
    own feature (``decoder``: EXIF orientation and mode as ``datasets`` applies them), so that a corrupt image is
    reported with its row and file. Without a ``decoder`` the cells are PIL images already.
    """

    def __init__(self, image_column: str, image_size: int | None, decoder: datasets.Image | None = None) -> None:
        self.image_column = image_column
        self.image_size = image_size
        self.decoder = decoder

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        pixels, heights, widths = [], [], []
        for cell, row in zip(batch[self.image_column], indices, strict=True):
            try:
                image = self.decoder.decode_example(cell) if self.decoder is not None else cell
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                where = f" ({cell['path']})" if isinstance(cell, dict) and cell.get("path") else ""
                raise ValueError(
                    f"Corrupt or unreadable image at row {row}{where} of column {self.image_column!r}: {err}. "
                    "Remove or replace the file and run again."
                ) from err
            chw = pil_to_uint8_chw(image, self.image_size)
            pixels.append(chw.permute(1, 2, 0).contiguous().numpy().tobytes())
            heights.append(int(chw.shape[1]))
            widths.append(int(chw.shape[2]))
        return {PIXELS_COLUMN: pixels, HEIGHT_COLUMN: heights, WIDTH_COLUMN: widths}


def decode_images(
    dataset: datasets.Dataset,
    *,
    image_column: str,
    label_column: str,
    image_size: int | None = None,
    num_proc: int | None = None,
    desc: str = "Decoding images",
) -> datasets.Dataset:
    """Decode ``image_column`` once into the cache columns ``pixels`` (uint8 HWC bytes), ``height``, ``width``.

    Only the cache columns and ``label_column`` are kept. Images are converted to RGB and, when
    ``image_size`` is given and differs, resized (shorter side) and centre-cropped to it. The result is
    cached by ``datasets`` when the source is file-backed, so later runs skip the decoding.
    """
    if image_column not in dataset.column_names:
        raise ValueError(f"Image column {image_column!r} not in {dataset.column_names}.")
    features = datasets.Features(
        {
            PIXELS_COLUMN: datasets.Value("binary"),
            HEIGHT_COLUMN: datasets.Value("int32"),
            WIDTH_COLUMN: datasets.Value("int32"),
            label_column: dataset.features[label_column],
        }
    )
    remove = [c for c in dataset.column_names if c != label_column]
    decoder = dataset.features[image_column]
    if isinstance(decoder, datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    else:
        decoder = None
    return dataset.map(
        _DecodeBatch(image_column, image_size, decoder),
        batched=True,
        with_indices=True,
        batch_size=1000,
        remove_columns=remove,
        features=features,
        num_proc=num_proc,
        desc=desc,
    )


def class_balanced_subset(
    dataset: datasets.Dataset, *, label_column: str, size: int, num_classes: int, seed: int = 0
) -> datasets.Dataset:
    """A seeded subset with ``size // num_classes`` examples of every class.

    When ``size`` is not a multiple of ``num_classes`` the remainder goes, one each, to classes drawn with
    the same seed. The rows keep their original order (the training sampler shuffles).

    Raises:
        ValueError: ``size`` is not positive, exceeds the dataset, or a class has too few examples.
    """
    if size <= 0:
        raise ValueError(f"train_subset must be positive, got {size}.")
    if size > len(dataset):
        raise ValueError(f"train_subset {size} exceeds the {len(dataset)} examples of the training split.")
    labels = read_labels(dataset, label_column)
    rng = np.random.default_rng(seed)
    per_class = np.full(num_classes, size // num_classes, dtype=np.int64)
    per_class[rng.choice(num_classes, size % num_classes, replace=False)] += 1
    chosen = []
    for cls in range(num_classes):
        idx = np.flatnonzero(labels == cls)
        if len(idx) < per_class[cls]:
            raise ValueError(
                f"Class {cls} has {len(idx)} examples, fewer than the {per_class[cls]} a balanced subset of "
                f"{size} needs."
            )
        chosen.append(rng.choice(idx, per_class[cls], replace=False))
    return dataset.select(np.sort(np.concatenate(chosen)).tolist())


def compute_mean_std(
    dataset: datasets.Dataset,
    *,
    image_column: str | None = None,
    max_images: int | None = None,
    batch_size: int = 1000,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of the pixels (scaled to [0, 1]) of ``dataset``.

    Reads the decoded-image cache columns when present, else decodes ``image_column``. The std is the
    population std over all pixels of all images (the convention of the usual CIFAR constants).
    """
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    if n == 0:
        raise ValueError("Cannot compute mean/std of an empty dataset.")
    total = np.zeros(3, dtype=np.float64)
    total_sq = np.zeros(3, dtype=np.float64)
    count = 0
    cached = PIXELS_COLUMN in dataset.column_names
    if not cached and image_column is None:
        raise ValueError("Pass image_column (or a dataset decoded with decode_images).")
    plain = dataset.with_format(None)
    for start in range(0, n, batch_size):
        rows = plain[start : min(n, start + batch_size)]
        if cached:
            arrays = [
                np.frombuffer(p, dtype=np.uint8).reshape(h, w, 3)
                for p, h, w in zip(rows[PIXELS_COLUMN], rows[HEIGHT_COLUMN], rows[WIDTH_COLUMN], strict=True)
            ]
        else:
            arrays = [pil_to_uint8_chw(img).permute(1, 2, 0).numpy() for img in rows[image_column]]
        for a in arrays:
            x = a.reshape(-1, 3).astype(np.float64) / 255.0
            total += x.sum(0)
            total_sq += (x * x).sum(0)
            count += x.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
