"""From a dataset name to ready-to-train ``datasets.Dataset`` objects and a collator."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from sigreg_hf.experiments.data.batch_augment import BatchAugmentation
from sigreg_hf.experiments.data.cache import class_balanced_subset, compute_mean_std, decode_images
from sigreg_hf.experiments.data.clock import add_row_column
from sigreg_hf.experiments.data.loading import DEFAULT_DATASET, load_image_classification_dataset
from sigreg_hf.experiments.data.mixing import ImageClassificationCollator
from sigreg_hf.experiments.data.transforms import (
    AugmentationClock,
    ImageBatchTransform,
    build_eval_transform,
    build_train_transform,
    resolve_mean_std,
)

logger = logging.getLogger(__name__)


@dataclass
class PreparedImageData:
    """Transformed train/eval datasets, their collator, and the facts a model and image processor need."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    collator: ImageClassificationCollator
    num_classes: int
    id2label: dict[int, str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    image_column: str
    label_column: str
    source: str
    #: Keys the training augmentation by (seed, epoch, row); advance it with AugmentationEpochCallback.
    clock: AugmentationClock | None = None
    #: With ``device_augmentation``: the batched training augmentation the trainer applies on its device (the
    #: training batches hold uint8 images and their rows); the collator's ``mix_batch`` then mixes there too.
    batch_augmentation: BatchAugmentation | None = None
    mix_on_device: bool = False


def prepare_image_classification_data(
    dataset_name: str = DEFAULT_DATASET,
    *,
    dataset_config: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    eval_split: str | None = "test",
    cache_dir: str | None = None,
    train_subset: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    decode_cache: bool = True,
    decode_num_proc: int | None = None,
    image_size: int = 32,
    crop_padding: int = 4,
    hflip: bool = True,
    randaugment_num_ops: int = 0,
    randaugment_magnitude: int = 9,
    mean_std: str = "cifar100",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    mix: bool = False,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    mix_prob: float = 1.0,
    mix_switch_prob: float = 0.5,
    keyed_augmentation: bool = True,
    local_copy: bool = True,
    device_augmentation: bool = False,
) -> PreparedImageData:
    """Load, optionally subset and decode-cache, and attach lazy transforms to train/eval splits.

    ``mean_std`` is a preset name (see :data:`~sigreg_hf.experiments.data.transforms.MEAN_STD_PRESETS`) or
    ``"dataset"`` to compute the statistics from the (subset) training split; explicit ``mean``/``std``
    win over both. ``train_subset`` keeps ``train_subset // num_classes`` examples per class (seeded);
    ``max_eval_samples`` subsets the evaluation split the same way. Subsets are taken before decoding, so
    only the images used are decoded (and cached). With ``keyed_augmentation`` (default) the training
    augmentation and mixing are seeded by ``(seed, epoch, row)`` (see :class:`AugmentationClock`): add
    ``AugmentationEpochCallback(prepared.clock)`` to the Trainer so that a resumed run is exact. ``local_copy``:
    see :func:`~sigreg_hf.experiments.data.loading.load_image_classification_dataset`. With ``device_augmentation``
    the training examples are the decoded uint8 images (and their rows) and ``prepared.batch_augmentation`` /
    ``prepared.collator.mix_batch`` augment and mix whole batches on the training device (see
    :class:`~sigreg_hf.experiments.image_trainer.ImageClassificationTrainer`).
    """
    raw = load_image_classification_dataset(
        dataset_name,
        config_name=dataset_config,
        image_column=image_column,
        label_column=label_column,
        train_split=train_split,
        eval_split=eval_split,
        cache_dir=cache_dir,
        local_copy=local_copy,
    )
    train, eval_ds = raw.train, raw.eval
    # subset first (labels only, through Arrow), then decode only the images that are used
    if train_subset is not None:
        train = class_balanced_subset(
            train, label_column=raw.label_column, size=train_subset, num_classes=raw.num_classes, seed=seed
        )
    if max_eval_samples is not None and max_eval_samples <= 0:
        raise ValueError(f"max_eval_samples must be a positive number of images; got {max_eval_samples}.")
    if eval_ds is not None and max_eval_samples is not None and max_eval_samples < len(eval_ds):
        # class-balanced and seeded: split files are often sorted by class (imagefolder trees are)
        try:
            eval_ds = class_balanced_subset(
                eval_ds, label_column=raw.label_column, size=max_eval_samples, num_classes=raw.num_classes,
                seed=seed,
            )
        except ValueError:  # some class too small for a balanced subset: a seeded random one instead
            eval_ds = eval_ds.shuffle(seed=seed).select(range(max_eval_samples)).flatten_indices()
    if decode_cache:
        train = decode_images(
            train, image_column=raw.image_column, label_column=raw.label_column, image_size=image_size,
            num_proc=decode_num_proc, desc=f"Decoding {train_split} images (cached)",
        )
        if eval_ds is not None:
            eval_ds = decode_images(
                eval_ds, image_column=raw.image_column, label_column=raw.label_column, image_size=image_size,
                num_proc=decode_num_proc, desc=f"Decoding {eval_split} images (cached)",
            )
    if mean is None and std is None and mean_std == "dataset":
        mean, std = compute_mean_std(train, image_column=raw.image_column)
        logger.info("Mean/std computed from the training split: %s / %s", mean, std)
    mean_t, std_t = resolve_mean_std(None if mean is not None else mean_std, mean, std)

    normalize = build_eval_transform(mean_t, std_t)  # once per batch, after the per-image augmentation
    common = {"image_column": raw.image_column, "label_column": raw.label_column, "image_size": image_size}
    clock = AugmentationClock(seed) if keyed_augmentation else None
    if clock is not None:
        train = add_row_column(train)
    batch_augmentation = None
    if device_augmentation:
        batch_augmentation = BatchAugmentation(
            mean=mean_t, std=std_t, crop_size=image_size, padding=crop_padding, hflip=hflip,
            randaugment_num_ops=randaugment_num_ops, randaugment_magnitude=randaugment_magnitude,
        )
        train = train.with_transform(ImageBatchTransform(None, **common))  # uint8 images (and rows) only
    else:
        train_tf = build_train_transform(
            mean_t, std_t, crop_size=image_size, padding=crop_padding, hflip=hflip,
            randaugment_num_ops=randaugment_num_ops, randaugment_magnitude=randaugment_magnitude, normalize=False,
        )
        train = train.with_transform(
            ImageBatchTransform(train_tf, mark_for_mixing=True, clock=clock, batch_transform=normalize, **common)
        )
    if eval_ds is not None:
        eval_ds = eval_ds.with_transform(ImageBatchTransform(None, batch_transform=normalize, **common))
    collator = ImageClassificationCollator(
        raw.num_classes, mix=mix and not device_augmentation, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
        prob=mix_prob, switch_prob=mix_switch_prob, seed=seed, clock=clock, keep_rows=device_augmentation,
    )
    return PreparedImageData(
        train=train,
        eval=eval_ds,
        collator=collator,
        num_classes=raw.num_classes,
        id2label=raw.id2label,
        mean=mean_t,
        std=std_t,
        image_size=image_size,
        image_column=raw.image_column,
        label_column=raw.label_column,
        source=raw.source,
        clock=clock,
        batch_augmentation=batch_augmentation,
        mix_on_device=mix and device_augmentation,
    )
