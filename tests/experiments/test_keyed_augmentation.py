"""Issue 11, item 4: augmentation keyed by (seed, epoch, row), so that a resumed run draws what the
uninterrupted one drew (the Trainer restores torch's RNG only after the first resumed batch is fetched)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from sigreg_hf.experiments.data import ImageClassificationCollator, build_train_transform
from sigreg_hf.experiments.data.clock import AugmentationEpochCallback, add_row_column
from sigreg_hf.experiments.data.transforms import (
    MIX_MARKER,
    PIXELS_COLUMN,
    ROW_COLUMN,
    AugmentationClock,
    ImageBatchTransform,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _batch(rows: list[int]) -> dict[str, list]:
    rng = np.random.default_rng(0)
    images = {r: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for r in range(16)}
    return {PIXELS_COLUMN: [images[r].tobytes() for r in rows], "height": [32] * len(rows), "width": [32] * len(rows),
            "label": [r % 4 for r in rows], ROW_COLUMN: rows}  # fmt: skip


def _transform(clock: AugmentationClock) -> ImageBatchTransform:
    tf = build_train_transform((0.5,) * 3, (0.25,) * 3, crop_size=32, padding=4, hflip=True, randaugment_num_ops=2)
    return ImageBatchTransform(tf, image_column="img", label_column="label", mark_for_mixing=True, clock=clock)


def test_each_rows_augmentation_depends_on_seed_epoch_and_row_only():
    clock = AugmentationClock(seed=3)
    transform = _transform(clock)
    first = transform(_batch([0, 1, 2, 3]))
    state = torch.get_rng_state()
    torch.manual_seed(123)  # whatever torch's global stream does
    again = transform(_batch([3, 9, 1, 0]))  # other batch-mates, other order
    by_row = dict(zip(again[ROW_COLUMN], again["pixel_values"], strict=True))
    for row, image in zip(first[ROW_COLUMN], first["pixel_values"], strict=True):
        if row in by_row:
            assert torch.equal(image, by_row[row])
    torch.set_rng_state(state)
    before = torch.get_rng_state()
    transform(_batch([0, 1]))
    assert torch.equal(before, torch.get_rng_state())  # the global stream is not consumed
    clock.epoch = 1
    later = transform(_batch([0, 1, 2, 3]))
    assert not all(torch.equal(a, b) for a, b in zip(first["pixel_values"], later["pixel_values"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first["pixel_values"], _transform(AugmentationClock(4))(
        _batch([0, 1, 2, 3]))["pixel_values"], strict=True))  # fmt: skip


def test_keyed_augmentation_keeps_its_randomness():
    """Over many rows the flips are fair and the crops vary: keying changes where randomness comes from, not how
    much there is."""
    flip = build_train_transform((0.0,) * 3, (1.0,) * 3, crop_size=32, padding=0, hflip=True, randaugment_num_ops=0)
    transform = ImageBatchTransform(flip, image_column="img", label_column="label", clock=AugmentationClock(0))
    rows = list(range(400))
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    batch = {PIXELS_COLUMN: [image.tobytes()] * 400, "height": [32] * 400, "width": [32] * 400, "label": [0] * 400,
             ROW_COLUMN: rows}  # fmt: skip
    out = transform(batch)["pixel_values"]
    flipped = sum(not torch.equal(x, out[0]) for x in out)
    assert 150 < flipped < 250  # Binomial(399, 1/2) up to the first row's side


def test_collator_mixes_by_rows_and_epoch():
    clock = AugmentationClock(seed=1)
    collator = ImageClassificationCollator(4, mix=True, seed=1, clock=clock)
    features = [
        {"pixel_values": torch.rand(3, 8, 8), "labels": r % 4, MIX_MARKER: True, ROW_COLUMN: r} for r in range(6)
    ]
    a, b = collator(features), collator(features)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    clock.epoch = 1
    c = collator(features)
    assert not (torch.equal(c["pixel_values"], a["pixel_values"]) and torch.equal(c["labels"], a["labels"]))


def test_epoch_callback_and_row_column():
    clock = AugmentationClock(seed=0)
    callback = AugmentationEpochCallback(clock)
    args = TrainingArguments(output_dir="unused", report_to="none")
    for epoch, expected in ((0.0, 0), (2.0, 2), (2.48, 2), (2.9999999, 2)):
        callback.on_epoch_begin(args, TrainerState(epoch=epoch), TrainerControl())
        assert clock.epoch == expected
    data = datasets.Dataset.from_dict({"x": list(range(10))}).select([7, 2, 5])
    assert add_row_column(data)[ROW_COLUMN] == [0, 1, 2] and add_row_column(data)["x"] == [7, 2, 5]
    persistent = TrainingArguments(output_dir="unused", report_to="none", dataloader_num_workers=2,
                                   dataloader_persistent_workers=True)  # fmt: skip
    with pytest.raises(ValueError, match="dataloader_persistent_workers=False"):
        callback.on_train_begin(persistent, TrainerState(), TrainerControl())
