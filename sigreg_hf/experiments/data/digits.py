"""scikit-learn's handwritten digits as an image-classification dataset folder (the quickstart's offline data).

1,797 8x8 grey images in 10 classes ship inside scikit-learn; :func:`digits_dataset` writes a stratified,
seeded train/test split as a ``datasets`` folder (``save_to_disk``) that the data pipeline loads like any other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = ["DIGITS", "DIGITS_NAMES", "DIGITS_PRETTY_NAME", "DIGITS_TEST_FRACTION", "digits_dataset"]

#: Name that selects the built-in scikit-learn digits dataset.
DIGITS = "digits"
#: Dataset names that mean the scikit-learn digits (the second is what results.json records).
DIGITS_NAMES = ("digits", "sklearn-digits")
DIGITS_PRETTY_NAME = "scikit-learn handwritten digits (load_digits, 8x8)"
DIGITS_TEST_FRACTION = 0.5


def digits_dataset(
    path: str | Path, *, test_fraction: float = DIGITS_TEST_FRACTION, seed: int = 0, train_subset: int | None = None
) -> Path:
    """Write scikit-learn's digits as a ``datasets.DatasetDict`` (``image``: 8x8 grey PNG, ``label``: ClassLabel).

    The train/test split is stratified and seeded (``sklearn.model_selection.train_test_split``); pixel
    values 0..16 are scaled to 0..255. ``train_subset`` keeps a stratified subset of the training split.
    Returns ``path`` (reused when it already holds the same split).
    """
    path = Path(path)
    stamp = {"test_fraction": test_fraction, "seed": seed, "train_subset": train_subset}
    stamp_file = path / "quickstart_split.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return path
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    if train_subset is not None and train_subset < len(idx_train):
        idx_train, _ = train_test_split(
            idx_train, train_size=train_subset, stratify=labels[idx_train], random_state=seed
        )
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )

    def split(indices: np.ndarray) -> datasets.Dataset:
        rows = {"image": [Image.fromarray(images[i], mode="L") for i in indices],
                "label": [int(labels[i]) for i in indices]}  # fmt: skip
        return datasets.Dataset.from_dict(rows, features=features)

    if path.exists():
        shutil.rmtree(path)
    datasets.DatasetDict({"train": split(idx_train), "test": split(idx_test)}).save_to_disk(str(path))
    stamp_file.write_text(json.dumps(stamp))
    return path
