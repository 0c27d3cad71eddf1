"""Image-classification data through `datasets`: loading, decoded-image cache, transforms, mixing.

See :func:`prepare_image_classification_data` for the one-call path used by ``scripts/train.py``.
"""

from sigreg_hf.experiments.data.arguments import DataArguments
from sigreg_hf.experiments.data.batch_augment import BatchAugmentation
from sigreg_hf.experiments.data.cache import class_balanced_subset, compute_mean_std, decode_images
from sigreg_hf.experiments.data.loading import (
    DEFAULT_DATASET,
    DatasetUnavailableError,
    ImageClassificationData,
    detect_columns,
    load_image_classification_dataset,
)
from sigreg_hf.experiments.data.mixing import ImageClassificationCollator, dominant_label_top1
from sigreg_hf.experiments.data.pipeline import PreparedImageData, prepare_image_classification_data
from sigreg_hf.experiments.data.synthetic import synthetic_cifar100_split, write_synthetic_cifar100
from sigreg_hf.experiments.data.transforms import (
    MEAN_STD_PRESETS,
    MIX_MARKER,
    ImageBatchTransform,
    build_eval_transform,
    build_train_transform,
    resolve_mean_std,
)

__all__ = [
    "DEFAULT_DATASET",
    "MEAN_STD_PRESETS",
    "MIX_MARKER",
    "BatchAugmentation",
    "DataArguments",
    "DatasetUnavailableError",
    "ImageBatchTransform",
    "ImageClassificationCollator",
    "ImageClassificationData",
    "PreparedImageData",
    "build_eval_transform",
    "build_train_transform",
    "class_balanced_subset",
    "compute_mean_std",
    "decode_images",
    "detect_columns",
    "dominant_label_top1",
    "load_image_classification_dataset",
    "prepare_image_classification_data",
    "resolve_mean_std",
    "synthetic_cifar100_split",
    "write_synthetic_cifar100",
]
