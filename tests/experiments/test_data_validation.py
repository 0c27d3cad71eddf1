"""Issue 11, items 6 and 7: integer label columns, label errors that name the row, subset before decoding,
corrupt images named before training, bad sizes refused."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from sigreg_hf.experiments.data import (
    DataArguments,
    load_image_classification_dataset,
    prepare_image_classification_data,
)
from sigreg_hf.experiments.data.cache import class_balanced_subset, read_labels

pytestmark = pytest.mark.usefixtures("single_thread")


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _int_label_split(labels: list[int]) -> datasets.Dataset:
    """Images + a plain int64 label column (no ClassLabel), as many parquet exports have."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    cells = [{"bytes": _png(i), "path": None} for i in range(len(labels))]
    return datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features)


def _write_parquet(root: Path, train: list[int], test: list[int]) -> Path:
    (root / "data").mkdir(parents=True)
    _int_label_split(train).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    _int_label_split(test).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def test_int_label_parquet_folder_loads_and_trains_data(tmp_path: Path) -> None:
    root = _write_parquet(tmp_path / "pq", [i % 4 for i in range(24)], [i % 4 for i in range(8)])
    data = load_image_classification_dataset(str(root))
    assert (data.image_column, data.label_column, data.num_classes) == ("image", "label", 4)
    prepared = prepare_image_classification_data(
        DataArguments(dataset_name=str(root), train_subset=8, mean_std="cifar10")
    )
    batch = prepared.collator([prepared.train[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and prepared.num_classes == 4


def test_int_label_save_to_disk_folder_loads(tmp_path: Path) -> None:
    datasets.DatasetDict(
        {"train": _int_label_split([0, 1, 2, 1, 0, 2]), "test": _int_label_split([2, 0])}
    ).save_to_disk(str(tmp_path / "disk"))
    assert load_image_classification_dataset(str(tmp_path / "disk")).num_classes == 3


def test_negative_and_out_of_range_labels_name_the_row(tmp_path: Path) -> None:
    root = _write_parquet(tmp_path / "neg", [0, 1, -1, 2], [0, 1])
    with pytest.raises(ValueError, match=r"Split 'train', row 2: label -1 in column 'label' is outside 0\.\.2"):
        load_image_classification_dataset(str(root))
    root = _write_parquet(tmp_path / "range", [0, 1, 2, 1], [0, 1, 7])
    with pytest.raises(ValueError, match=r"Split 'test', row 2: label 7 in column 'label' is outside 0\.\.2"):
        load_image_classification_dataset(str(root))


def test_read_labels_uses_the_selected_rows_and_rejects_missing_labels() -> None:
    split = _int_label_split([3, 1, 4, 1, 5])
    np.testing.assert_array_equal(read_labels(split.select([4, 0, 2]), "label"), [5, 3, 4])
    int_label = datasets.Features({"label": datasets.Value("int64")})
    holes = datasets.Dataset.from_dict({"label": [0, None, 1]}, features=int_label)
    with pytest.raises(ValueError, match=r"missing \(null\) label at row 1"):
        read_labels(holes, "label")


def _imagefolder(root: Path, corrupt: tuple[str, int] | None = None) -> Path:
    for split, per_class in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(_png(hash((split, cls, i)) % 1000))
    if corrupt is not None:
        cls, i = corrupt
        (root / "train" / cls / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def test_corrupt_image_is_named_before_training(tmp_path: Path) -> None:
    root = _imagefolder(tmp_path / "tree", corrupt=("dog", 3))
    with pytest.raises(ValueError, match=r"Corrupt or unreadable image at row \d+ \(.*dog/3\.png\)"):
        prepare_image_classification_data(DataArguments(dataset_name=str(root), mean_std="cifar10"))


def test_subset_is_taken_before_decoding(tmp_path: Path) -> None:
    """Only the subset's images are decoded: corrupt images outside the subset do not matter."""
    root = _imagefolder(tmp_path / "tree")
    raw = load_image_classification_dataset(str(root)).train.cast_column("image", datasets.Image(decode=False))
    subset = class_balanced_subset(raw, label_column="label", size=4, num_classes=2, seed=0)
    used = {Path(cell["path"]).resolve() for cell in subset["image"]}
    unused = [p for p in (root / "train").rglob("*.png") if p.resolve() not in used]
    assert len(used) == 4 and len(unused) == 8
    for path in unused:
        path.write_bytes(b"not an image")
    prepared = prepare_image_classification_data(
        DataArguments(dataset_name=str(root), train_subset=4, mean_std="cifar10"), seed=0
    )
    assert len(prepared.train) == 4 and prepared.train[0]["pixel_values"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="Corrupt or unreadable image"):
        prepare_image_classification_data(DataArguments(dataset_name=str(root), mean_std="cifar10"))


@pytest.mark.parametrize("name", ["train_subset", "max_eval_samples"])
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_subset_sizes_are_refused(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"--{name} must be a positive number of images .*got {value}"):
        DataArguments(**{name: value})


def test_subset_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_subset 13 exceeds the 12 examples"):
        prepare_image_classification_data(
            DataArguments(dataset_name=str(_imagefolder(tmp_path / "tree")), train_subset=13, mean_std="cifar10")
        )
