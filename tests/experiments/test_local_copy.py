"""A local dataset folder is resolved by `datasets` once; later runs read the saved copy while nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from sigreg_hf.experiments.data import (
    DataArguments,
    load_image_classification_dataset,
    local_copy,
    prepare_image_classification_data,
)
from sigreg_hf.experiments.data.local_copy import copies_root, folder_fingerprint, load_local_folder


def _imagefolder(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _refuse_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("datasets.load_dataset called: the saved copy should have been read")

    monkeypatch.setattr(local_copy.datasets, "load_dataset", refuse)


def test_second_load_reads_the_copy_with_the_same_rows_and_features(tmp_path, monkeypatch):
    folder, cache = _imagefolder(tmp_path / "tree"), str(tmp_path / "cache")
    first = load_local_folder(folder, cache_dir=cache)
    _refuse_load_dataset(monkeypatch)
    second = load_local_folder(folder, cache_dir=cache)
    assert set(second) == {"train", "test"}
    for split in first:
        assert second[split].features == first[split].features  # Image and ClassLabel features come back
        assert isinstance(second[split].features["image"], datasets.Image)
        assert second[split]["label"] == first[split]["label"]
        a, b = first[split][0]["image"], second[split][0]["image"]
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # the copy stores paths, not the images' bytes: an error can still name the file
    cell = second["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert cell["bytes"] is None and Path(cell["path"]).is_file()


@pytest.mark.parametrize("change", ["edit", "add", "remove"])
def test_any_change_to_the_folder_makes_a_new_copy(tmp_path, change):
    folder, cache = _imagefolder(tmp_path / "tree"), str(tmp_path / "cache")
    load_local_folder(folder, cache_dir=cache)
    key_before, n_before = folder_fingerprint(folder, extra="config=None")
    target = folder / "train" / "cat" / "0.png"
    if change == "edit":
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(target)
        os.utime(target, ns=(1, 1))  # a rewrite within the same mtime tick must still count: size or mtime differ
    elif change == "add":
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(folder / "train" / "cat" / "new.png")
    else:
        target.unlink()
    key_after, n_after = folder_fingerprint(folder, extra="config=None")
    assert key_after != key_before
    reloaded = load_local_folder(folder, cache_dir=cache)
    expected = {"edit": n_before, "add": n_before + 1, "remove": n_before - 1}[change]
    assert n_after == expected and len(reloaded["train"]) + len(reloaded["test"]) == expected
    # the earlier state's copy is gone (no run can read it again); another folder's copy stays
    assert [p.name for p in copies_root(cache).iterdir()] == [key_after]
    other = load_local_folder(_imagefolder(tmp_path / "other"), cache_dir=cache)
    assert len(other["train"]) == 6 and len(list(copies_root(cache).iterdir())) == 2
    load_local_folder(folder, cache_dir=cache)  # unchanged: read, nothing removed
    assert len(list(copies_root(cache).iterdir())) == 2


def test_a_copy_cut_off_while_saving_is_never_read(tmp_path):
    folder, cache = _imagefolder(tmp_path / "tree"), str(tmp_path / "cache")
    key, _ = folder_fingerprint(folder, extra="config=None")
    stale = copies_root(cache) / key
    stale.mkdir(parents=True)
    (stale / "dataset_dict.json").write_text("{}")  # a folder without the completion marker
    with pytest.raises(RuntimeError, match="not a complete dataset copy.*Remove that folder"):
        load_local_folder(folder, cache_dir=cache)
    (stale / "dataset_dict.json").unlink()
    stale.rmdir()
    loaded = load_local_folder(folder, cache_dir=cache)
    assert len(loaded["train"]) == 6
    assert not [p for p in copies_root(cache).iterdir() if ".partial-" in p.name]


def test_training_data_path_uses_the_copy_and_can_be_switched_off(tmp_path, monkeypatch):
    folder, cache = _imagefolder(tmp_path / "tree"), str(tmp_path / "cache")
    first = prepare_image_classification_data(
        DataArguments(dataset_name=str(folder), dataset_cache_dir=cache, mean_std="cifar10")
    )
    calls = []
    real_load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    again = prepare_image_classification_data(
        DataArguments(dataset_name=str(folder), dataset_cache_dir=cache, mean_std="cifar10")
    )
    assert calls == []
    assert again.num_classes == first.num_classes == 2 and again.id2label == first.id2label
    assert np.array_equal(again.train[0]["pixel_values"].numpy(), first.train[0]["pixel_values"].numpy())
    load_image_classification_dataset(str(folder), cache_dir=cache, local_copy=False)
    assert len(calls) == 1  # local_copy=False resolves the folder with datasets every time
