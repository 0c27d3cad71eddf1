"""A tiny synthetic dataset in the CIFAR-100 Hub schema, for smoke runs, tests and benchmarks.

``write_synthetic_cifar100(dir)`` writes ``dir/data/train-00000-of-00001.parquet`` and
``dir/data/test-00000-of-00001.parquet`` with columns ``img`` (PNG ``Image``), ``fine_label``
(``ClassLabel``, 100 classes) and ``coarse_label`` (``ClassLabel``, 20 classes), exactly the layout of
``uoft-cs/cifar100``. Each class has its own mean colour plus noise, so the data are learnable.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
from PIL import Image


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_cifar100_split(
    num_examples: int, *, num_classes: int = 100, image_size: int = 32, seed: int = 0
) -> datasets.Dataset:
    """One split in the CIFAR-100 schema (labels cycle through the classes, so every class appears)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).integers(40, 216, size=(num_classes, 3))
    labels = np.arange(num_examples) % num_classes
    images = []
    for y in labels:
        noise = rng.normal(0, 40, size=(image_size, image_size, 3))
        images.append({"bytes": _png(np.clip(centres[y] + noise, 0, 255).astype(np.uint8)), "path": None})
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=[f"class_{i:03d}" for i in range(num_classes)]),
            "coarse_label": datasets.ClassLabel(names=[f"super_{i:02d}" for i in range(20)]),
        }
    )
    data = {"img": images, "fine_label": labels.tolist(), "coarse_label": (labels % 20).tolist()}
    return datasets.Dataset.from_dict(data, features=features)


def write_synthetic_cifar100(
    directory: str | Path, *, num_train: int = 200, num_test: int = 100, num_classes: int = 100, seed: int = 0
) -> Path:
    """Write train/test parquet files in the CIFAR-100 Hub layout under ``directory``; return it."""
    root = Path(directory)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", num_train, 0), ("test", num_test, 1)):
        ds = synthetic_cifar100_split(n, num_classes=num_classes, seed=seed + offset)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root
