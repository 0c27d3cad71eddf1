"""From a dataset name to ready-to-train ``datasets.Dataset`` objects and a collator."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets

from sigreg_hf.experiments.data.arguments import DataArguments
from sigreg_hf.experiments.data.batch_augment import BatchAugmentation
from sigreg_hf.experiments.data.cache import class_balanced_subset, compute_mean_std, decode_images
from sigreg_hf.experiments.data.clock import add_row_column
from sigreg_hf.experiments.data.loading import load_image_classification_dataset
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


def prepare_image_classification_data(data_args: DataArguments | None = None, *, seed: int = 0) -> PreparedImageData:
    """Load, optionally subset and decode-cache, and attach lazy transforms to train/eval splits.

    ``data_args`` (default: ``DataArguments()``, CIFAR-100 from the Hub) is the command line's data group; its
    fields, in short: ``mean_std`` is a preset name (see
    :data:`~sigreg_hf.experiments.data.transforms.MEAN_STD_PRESETS`) or ``"dataset"`` to compute the statistics
    from the (subset) training split; explicit ``mean``/``std`` win over both. ``train_subset`` keeps
    ``train_subset // num_classes`` examples per class (``seed``-ed); ``max_eval_samples`` subsets the
    evaluation split the same way. Subsets are taken before decoding, so only the images used are decoded (and
    cached). With ``keyed_augmentation`` (default) the training augmentation and mixing are seeded by
    ``(seed, epoch, row)`` (see :class:`AugmentationClock`): add ``AugmentationEpochCallback(prepared.clock)`` to
    the Trainer so that a resumed run is exact. ``local_copy``: see
    :func:`~sigreg_hf.experiments.data.loading.load_image_classification_dataset`. With ``device_augmentation``
    the training examples are the decoded uint8 images (and their rows) and ``prepared.batch_augmentation`` /
    ``prepared.collator.mix_batch`` augment and mix whole batches on the training device (see
    :class:`~sigreg_hf.experiments.image_trainer.ImageClassificationTrainer`).
    """
    a = data_args if data_args is not None else DataArguments()
    eval_split = a.evaluation_split
    raw = load_image_classification_dataset(
        a.dataset_name,
        config_name=a.dataset_config,
        image_column=a.image_column,
        label_column=a.label_column,
        train_split=a.train_split,
        eval_split=eval_split,
        cache_dir=a.dataset_cache_dir,
        local_copy=a.local_copy,
    )
    train, eval_ds = raw.train, raw.eval
    # subset first (labels only, through Arrow), then decode only the images that are used
    if a.train_subset is not None:
        train = class_balanced_subset(
            train, label_column=raw.label_column, size=a.train_subset, num_classes=raw.num_classes, seed=seed
        )
    max_eval_samples = a.max_eval_samples
    if eval_ds is not None and max_eval_samples is not None and max_eval_samples < len(eval_ds):
        # class-balanced and seeded: split files are often sorted by class (imagefolder trees are)
        try:
            eval_ds = class_balanced_subset(
                eval_ds, label_column=raw.label_column, size=max_eval_samples, num_classes=raw.num_classes,
                seed=seed,
            )
        except ValueError:  # some class too small for a balanced subset: a seeded random one instead
            eval_ds = eval_ds.shuffle(seed=seed).select(range(max_eval_samples)).flatten_indices()
    if a.decode_cache:
        train = decode_images(
            train, image_column=raw.image_column, label_column=raw.label_column, image_size=a.image_size,
            num_proc=a.decode_num_proc, desc=f"Decoding {a.train_split} images (cached)",
        )
        if eval_ds is not None:
            eval_ds = decode_images(
                eval_ds, image_column=raw.image_column, label_column=raw.label_column, image_size=a.image_size,
                num_proc=a.decode_num_proc, desc=f"Decoding {eval_split} images (cached)",
            )
    mean, std = a.mean, a.std
    if mean is None and std is None and a.mean_std == "dataset":
        mean, std = compute_mean_std(train, image_column=raw.image_column)
        logger.info("Mean/std computed from the training split: %s / %s", mean, std)
    mean_t, std_t = resolve_mean_std(None if mean is not None else a.mean_std, mean, std)

    normalize = build_eval_transform(mean_t, std_t)  # once per batch, after the per-image augmentation
    common = {"image_column": raw.image_column, "label_column": raw.label_column, "image_size": a.image_size}
    clock = AugmentationClock(seed) if a.keyed_augmentation else None
    if clock is not None:
        train = add_row_column(train)
    batch_augmentation = None
    augmentation = {"crop_size": a.image_size, "padding": a.crop_padding, "hflip": a.hflip,
                    "randaugment_num_ops": a.randaugment_num_ops, "randaugment_magnitude": a.randaugment_magnitude}
    if a.device_augmentation:
        batch_augmentation = BatchAugmentation(mean=mean_t, std=std_t, **augmentation)
        train = train.with_transform(ImageBatchTransform(None, **common))  # uint8 images (and rows) only
    else:
        train_tf = build_train_transform(mean_t, std_t, normalize=False, **augmentation)
        train = train.with_transform(
            ImageBatchTransform(train_tf, mark_for_mixing=True, clock=clock, batch_transform=normalize, **common)
        )
    if eval_ds is not None:
        eval_ds = eval_ds.with_transform(ImageBatchTransform(None, batch_transform=normalize, **common))
    collator = ImageClassificationCollator(
        raw.num_classes, mix=a.mix and not a.device_augmentation, mixup_alpha=a.mixup_alpha,
        cutmix_alpha=a.cutmix_alpha, prob=a.mix_prob, switch_prob=a.mix_switch_prob, seed=seed, clock=clock,
        keep_rows=a.device_augmentation,
    )
    return PreparedImageData(
        train=train,
        eval=eval_ds,
        collator=collator,
        num_classes=raw.num_classes,
        id2label=raw.id2label,
        mean=mean_t,
        std=std_t,
        image_size=a.image_size,
        image_column=raw.image_column,
        label_column=raw.label_column,
        source=raw.source,
        clock=clock,
        batch_augmentation=batch_augmentation,
        mix_on_device=a.mix and a.device_augmentation,
    )
