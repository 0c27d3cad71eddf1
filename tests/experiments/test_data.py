"""Data loading (parquet / save_to_disk / imagefolder / Hub errors), transforms, decode cache, subsets, mixing."""

from __future__ import annotations

import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import sigreg_hf.experiments.data.loading as loading
from sigreg_hf.experiments.data import (
    MEAN_STD_PRESETS,
    MIX_MARKER,
    DataArguments,
    DatasetUnavailableError,
    ImageClassificationCollator,
    build_eval_transform,
    build_train_transform,
    class_balanced_subset,
    compute_mean_std,
    decode_images,
    detect_columns,
    dominant_label_top1,
    load_image_classification_dataset,
    prepare_image_classification_data,
    resolve_mean_std,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# -- loading ----------------------------------------------------------------------------------------------
def test_parquet_folder_in_cifar100_schema(synthetic_cifar100: Path) -> None:
    data = load_image_classification_dataset(str(synthetic_cifar100))
    assert (data.image_column, data.label_column) == ("img", "fine_label")
    assert data.num_classes == 100 and len(data.class_names) == 100
    assert len(data.train) == 64 and len(data.eval) == 16
    assert data.id2label[3] == "class_003"


def test_label_column_override_and_errors(synthetic_cifar100: Path) -> None:
    data = load_image_classification_dataset(str(synthetic_cifar100), label_column="coarse_label")
    assert data.label_column == "coarse_label" and data.num_classes == 20
    with pytest.raises(ValueError, match="nope.*not a column"):
        load_image_classification_dataset(str(synthetic_cifar100), image_column="nope")
    with pytest.raises(ValueError, match="Split 'validation' not found.*available splits"):
        load_image_classification_dataset(str(synthetic_cifar100), eval_split="validation")


def test_save_to_disk_folder(synthetic_cifar100: Path, tmp_path: Path) -> None:
    raw = datasets.load_dataset(str(synthetic_cifar100))
    raw.save_to_disk(str(tmp_path / "saved"))
    data = load_image_classification_dataset(str(tmp_path / "saved"))
    assert data.num_classes == 100 and len(data.train) == 64 and data.image_column == "img"


def _write_imagefolder(root: Path, classes: list[str], per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.jpg")


def test_imagefolder_tree(tmp_path: Path) -> None:
    _write_imagefolder(tmp_path / "tree", ["airplane", "bird", "cat"], 4)
    data = load_image_classification_dataset(str(tmp_path / "tree"))
    assert (data.image_column, data.label_column) == ("image", "label")
    assert data.num_classes == 3 and data.class_names == ["airplane", "bird", "cat"]
    assert len(data.train) == 12 and len(data.eval) == 12


def test_detect_columns_prefers_classlabel() -> None:
    features = datasets.Features(
        {"picture": datasets.Image(), "idx": datasets.Value("int64"), "y": datasets.ClassLabel(names=["a", "b"])}
    )
    assert detect_columns(features) == ("picture", "y")


def test_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        load_image_classification_dataset(str(tmp_path / "nothing" / "here"))


def test_unreachable_hub_fails_fast_with_guidance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    start = time.time()
    with pytest.raises(DatasetUnavailableError) as info:
        load_image_classification_dataset("uoft-cs/cifar100")
    assert time.time() - start < 5
    message = str(info.value)
    for needle in ("uoft-cs/cifar100", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "parquet", "save_to_disk"):
        assert needle in message
    assert "imagefolder" in message


def test_offline_and_not_cached_fails_fast(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 with an empty cache: an error within seconds naming the dataset and the variables."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from sigreg_hf.experiments.data import load_image_classification_dataset as f, DatasetUnavailableError as E\n"
        "try:\n    f('uoft-cs/cifar100')\nexcept E as e:\n    print('ERR', e)\n"
    )
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.time() - start < 60
    assert "ERR Cannot load dataset 'uoft-cs/cifar100'" in out.stdout, out.stderr[-2000:]
    assert "offline mode is on" in out.stdout and "HF_DATASETS_OFFLINE" in out.stdout


# -- transforms -------------------------------------------------------------------------------------------
def test_presets_and_resolution() -> None:
    assert MEAN_STD_PRESETS["cifar100"] == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    assert MEAN_STD_PRESETS["cifar100_peak"] == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert MEAN_STD_PRESETS["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert resolve_mean_std(None, [0.1, 0.2, 0.3], [1, 1, 1]) == ((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="Unknown mean/std preset"):
        resolve_mean_std("cifar1000")


def test_reference_mean_std_presets() -> None:
    """reference-recipes.md: the ResNet18 / first-round ViT notebooks' full-precision values; cifar100 rounds them."""
    full = (
        (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
        (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
    )
    assert MEAN_STD_PRESETS["cifar100_full"] == resolve_mean_std("cifar100_full") == full
    assert MEAN_STD_PRESETS["cifar100"] == tuple(tuple(round(v, 4) for v in part) for part in full)


def test_eval_transform_is_exact_normalisation() -> None:
    mean, std = MEAN_STD_PRESETS["cifar100"]
    img = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    out = build_eval_transform(mean, std)(img)
    expected = (200 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    assert torch.allclose(out[:, 5, 5], expected, atol=1e-6)


def test_train_transform_composition_and_randomness() -> None:
    mean, std = MEAN_STD_PRESETS["cifar10"]
    tf = build_train_transform(mean, std, randaugment_num_ops=2, randaugment_magnitude=9)
    kinds = [type(t) for t in tf.transforms]
    assert kinds[:3] == [v2.RandomCrop, v2.RandomHorizontalFlip, v2.RandAugment]
    assert tf.transforms[0].padding == [4, 4, 4, 4]
    assert (tf.transforms[2].num_ops, tf.transforms[2].magnitude) == (2, 9)
    assert v2.RandAugment not in [type(t) for t in build_train_transform(mean, std).transforms]
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    outs = [tf(img) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


# -- decode cache, subsets, statistics ---------------------------------------------------------------------
def test_decode_cache_matches_pil_and_is_reused(synthetic_cifar100: Path) -> None:
    raw = load_image_classification_dataset(str(synthetic_cifar100))
    decoded = decode_images(raw.train, image_column="img", label_column="fine_label")
    assert decoded.column_names == ["pixels", "height", "width", "fine_label"]
    row = decoded[5]
    pixels = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(row["height"], row["width"], 3)
    assert np.array_equal(pixels, np.asarray(raw.train[5]["img"].convert("RGB")))
    assert decoded.cache_files, "decoded images should live in an on-disk Arrow cache file"
    again = decode_images(raw.train, image_column="img", label_column="fine_label")
    assert again._fingerprint == decoded._fingerprint
    assert again.cache_files[0]["filename"] == decoded.cache_files[0]["filename"]


def test_class_balanced_subset_is_balanced_and_seeded(synthetic_cifar100_balanced: Path) -> None:
    raw = load_image_classification_dataset(str(synthetic_cifar100_balanced))
    sub = class_balanced_subset(raw.train, label_column="fine_label", size=50, num_classes=10, seed=0)
    labels = np.asarray(sub.with_format("numpy")["fine_label"])
    assert np.bincount(labels, minlength=10).tolist() == [5] * 10
    same = class_balanced_subset(raw.train, label_column="fine_label", size=50, num_classes=10, seed=0)
    other = class_balanced_subset(raw.train, label_column="fine_label", size=50, num_classes=10, seed=1)
    assert same._indices.to_pydict() == sub._indices.to_pydict()
    assert other._indices.to_pydict() != sub._indices.to_pydict()
    uneven = class_balanced_subset(raw.train, label_column="fine_label", size=53, num_classes=10, seed=0)
    counts = np.bincount(np.asarray(uneven.with_format("numpy")["fine_label"]), minlength=10)
    assert counts.sum() == 53 and set(counts.tolist()) == {5, 6}
    with pytest.raises(ValueError, match="fewer than"):
        skewed = raw.train.select([i for i in range(200) if i % 10 != 0 or i == 0])  # class 0: one image
        class_balanced_subset(skewed, label_column="fine_label", size=100, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="exceeds"):
        class_balanced_subset(sub, label_column="fine_label", size=51, num_classes=10, seed=0)


def test_compute_mean_std_matches_numpy(synthetic_cifar100: Path) -> None:
    raw = load_image_classification_dataset(str(synthetic_cifar100))
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) / 255 for im in raw.train["img"]])
    mean, std = compute_mean_std(raw.train, image_column="img")
    assert np.allclose(mean, arrays.reshape(-1, 3).mean(0), atol=1e-9)
    assert np.allclose(std, arrays.reshape(-1, 3).std(0), atol=1e-9)
    decoded = decode_images(raw.train, image_column="img", label_column="fine_label")
    assert np.allclose(compute_mean_std(decoded), (mean, std), atol=1e-12)


def test_prepare_gives_model_ready_examples(synthetic_cifar100_balanced: Path) -> None:
    data_args = DataArguments(
        str(synthetic_cifar100_balanced), train_subset=30, randaugment_num_ops=2, mix=True, mean_std="dataset"
    )
    prepared = prepare_image_classification_data(data_args)
    assert len(prepared.train) == 30 and prepared.num_classes == 10
    example = prepared.train[0]
    assert example["pixel_values"].shape == (3, 32, 32) and example["pixel_values"].dtype == torch.float32
    assert example[MIX_MARKER] is True and isinstance(example["labels"], int)
    assert MIX_MARKER not in prepared.eval[0]
    # keyed randomness: the same row reads the same within an epoch, and each new epoch sees new crops
    reads = [prepared.train[3]["pixel_values"] for _ in range(2)]
    assert torch.equal(reads[0], reads[1])
    epochs = []
    for epoch in range(4):
        prepared.clock.epoch = epoch
        epochs.append(prepared.train[3]["pixel_values"])
    assert any(not torch.equal(epochs[0], r) for r in epochs[1:])
    assert torch.equal(prepared.eval[2]["pixel_values"], prepared.eval[2]["pixel_values"])
    batch = prepared.collator([prepared.train[i] for i in range(7)])
    assert batch["labels"].shape == (7, 10) and batch["labels"].dtype == torch.float32
    eval_batch = prepared.collator([prepared.eval[i] for i in range(7)])
    assert eval_batch["labels"].dtype == torch.long and eval_batch["labels"].shape == (7,)


def test_prepare_without_decode_cache_gives_same_eval_pixels(synthetic_cifar100: Path) -> None:
    cached = prepare_image_classification_data(DataArguments(dataset_name=str(synthetic_cifar100), decode_cache=True))
    direct = prepare_image_classification_data(DataArguments(dataset_name=str(synthetic_cifar100), decode_cache=False))
    assert torch.equal(cached.eval[4]["pixel_values"], direct.eval[4]["pixel_values"])


# -- mixing -----------------------------------------------------------------------------------------------
def _features(batch: int, num_classes: int, train: bool = True) -> list[dict]:
    feats = []
    for i in range(batch):
        f = {"pixel_values": torch.full((3, 8, 8), float(i)), "labels": i % num_classes}
        if train:
            f[MIX_MARKER] = True
        feats.append(f)
    return feats


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 13])
@pytest.mark.parametrize("switch_prob", [0.0, 1.0])
def test_mixing_is_exact_for_any_batch_size(batch: int, switch_prob: float) -> None:
    """MixUp: x = lam*x_i + (1-lam)*x_{i-1}; CutMix: pasted-pixel share = 1 - own-label weight (box-corrected)."""
    num_classes = 16
    collator = ImageClassificationCollator(num_classes, mix=True, switch_prob=switch_prob, seed=3)
    for _ in range(5):
        out = collator(_features(batch, num_classes))
        x, y = out["pixel_values"], out["labels"]
        assert y.shape == (batch, num_classes) and y.dtype == torch.float32
        assert torch.allclose(y.sum(1), torch.ones(batch)) and (y >= 0).all()
        if batch == 1:
            assert y[0, 0] == 1.0  # a single example mixes with itself and keeps its label
            continue
        own = y[torch.arange(batch), torch.arange(batch) % num_classes]
        prev_value = torch.arange(batch).roll(1).float()
        if collator.last_choice == "mixup":
            expected = own.view(-1, 1, 1, 1) * torch.arange(batch).float().view(-1, 1, 1, 1) + (
                1 - own.view(-1, 1, 1, 1)
            ) * prev_value.view(-1, 1, 1, 1)
            assert torch.allclose(x, expected.expand_as(x), atol=1e-5)
        else:
            assert collator.last_choice == "cutmix"
            pasted = (x[:, 0] == prev_value.view(-1, 1, 1)).float().mean(dim=(1, 2))
            assert torch.allclose(pasted, 1 - own, atol=1e-6)


def test_mixing_choice_frequencies_and_seeding() -> None:
    a = ImageClassificationCollator(10, mix=True, seed=0)
    b = ImageClassificationCollator(10, mix=True, seed=0)
    c = ImageClassificationCollator(10, mix=True, seed=1)
    choices = []
    for _ in range(200):
        out_a, out_b = a(_features(6, 10)), b(_features(6, 10))
        assert torch.equal(out_a["labels"], out_b["labels"])
        assert torch.equal(out_a["pixel_values"], out_b["pixel_values"])
        choices.append(a.last_choice)
    share_cutmix = choices.count("cutmix") / len(choices)
    assert 0.35 < share_cutmix < 0.65 and choices.count("none") == 0
    differs = any(not torch.equal(a(_features(6, 10))["labels"], c(_features(6, 10))["labels"]) for _ in range(5))
    assert differs


def test_eval_batches_are_never_mixed() -> None:
    collator = ImageClassificationCollator(10, mix=True, seed=0)
    out = collator(_features(5, 10, train=False))
    assert out["labels"].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(out["pixel_values"][2], torch.full((3, 8, 8), 2.0))


def test_unmixed_training_batches_and_label_range() -> None:
    off = ImageClassificationCollator(10, mix=False)
    assert off(_features(3, 10))["labels"].dtype == torch.long
    never = ImageClassificationCollator(10, mix=True, prob=0.0, seed=0)
    soft = never(_features(3, 10))["labels"]
    assert torch.equal(soft, torch.nn.functional.one_hot(torch.arange(3), 10).float())
    with pytest.raises(ValueError, match="Labels must lie in"):
        ImageClassificationCollator(2)(_features(3, 10))


def test_dominant_label_top1() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    soft = torch.tensor([[0.3, 0.7, 0.0], [0.4, 0.0, 0.6]])
    assert dominant_label_top1(logits, soft).item() == pytest.approx(0.5)
    assert dominant_label_top1(logits, torch.tensor([1, 0])).item() == 1.0


def test_pipeline_bench_runs(synthetic_cifar100: Path) -> None:
    from sigreg_hf.experiments.data.bench import PipelineBench, markdown_table

    bench = PipelineBench(str(synthetic_cifar100))
    result = bench.run(decode_cache=True, randaugment=True, mix=True, num_images=64, batch_size=16)
    assert result.images >= 64 and result.images_per_second > 0
    ds, collate = bench.dataset_and_collator(decode_cache=False, randaugment=True, mix=True)
    batch = collate(ds.__getitems__(list(range(5))))
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["labels"].shape == (5, 100)
    assert "| yes | yes | yes |" in markdown_table([result])


def test_max_eval_samples_is_class_balanced_with_fallback(
    synthetic_cifar100_balanced: Path, synthetic_cifar100: Path
) -> None:
    balanced = prepare_image_classification_data(
        DataArguments(dataset_name=str(synthetic_cifar100_balanced), max_eval_samples=20)
    )
    labels = [balanced.eval[i]["labels"] for i in range(len(balanced.eval))]
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10
    sparse = prepare_image_classification_data(
        DataArguments(dataset_name=str(synthetic_cifar100), max_eval_samples=12)
    )  # 16 images, 100 classes
    assert len(sparse.eval) == 12
