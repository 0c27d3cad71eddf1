"""The data pipeline's argument group: what :func:`~sigreg_hf.experiments.data.prepare_image_classification_data`
reads, and the training command line's data options (``transformers.HfArgumentParser``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sigreg_hf.experiments.data.loading import DEFAULT_DATASET
from sigreg_hf.experiments.data.transforms import MEAN_STD_PRESETS

__all__ = ["DataArguments"]


@dataclass
class DataArguments:
    """Where the images come from and how they are augmented."""

    dataset_name: str = field(
        default=DEFAULT_DATASET,
        metadata={"help": "Hub id, parquet folder, save_to_disk folder or imagefolder tree (e.g. CIFAR-10)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: detected)."})
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str = field(default="test", metadata={"help": "Evaluation split ('none' for no evaluation)."})
    train_subset: int | None = field(
        default=None, metadata={"help": "Seeded class-balanced training subset of N images (N/num_classes per class)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a seeded class-balanced subset of N images."}
    )
    keyed_augmentation: bool = field(
        default=True,
        metadata={"help": "Seed each training image's augmentation and each batch's CutMix/MixUp by (seed, epoch, "
                  "row) instead of torch's global stream, so that a resumed run is exact (any worker count)."},
    )
    decode_cache: bool = field(
        default=True, metadata={"help": "Decode images once into a cached uint8 Arrow column (datasets.map)."}
    )
    local_copy: bool = field(
        default=True,
        metadata={"help": "Read a local dataset folder from a copy saved on its first use while no file in it "
                  "changed (skips datasets' resolution of every file: 27 s for CIFAR-10's 60,000 JPEGs here)."},
    )
    decode_num_proc: int | None = field(default=None, metadata={"help": "Processes for the one-off decoding."})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory."})
    image_size: int = field(default=32, metadata={"help": "Input resolution (images of another size are resized)."})
    crop_padding: int = field(default=4, metadata={"help": "RandomCrop padding (0: no padding)."})
    hflip: bool = field(default=True, metadata={"help": "RandomHorizontalFlip in the train transform."})
    randaugment_num_ops: int = field(default=0, metadata={"help": "RandAugment N (0: off; paper ViT: 2)."})
    randaugment_magnitude: int = field(default=9, metadata={"help": "RandAugment M (paper: 9)."})
    mean_std: str = field(
        default="cifar100",
        metadata={"help": f"Normalisation preset {sorted(MEAN_STD_PRESETS)} or 'dataset' (computed)."},
    )
    mean: list[float] | None = field(default=None, metadata={"help": "Explicit channel means (overrides mean_std)."})
    std: list[float] | None = field(default=None, metadata={"help": "Explicit channel stds (overrides mean_std)."})
    mix: bool = field(default=False, metadata={"help": "CutMix/MixUp on training batches (soft targets)."})
    mixup_alpha: float = field(default=0.8, metadata={"help": "MixUp Beta(alpha, alpha)."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix Beta(alpha, alpha)."})
    mix_prob: float = field(default=1.0, metadata={"help": "Probability that a training batch is mixed."})
    mix_switch_prob: float = field(default=0.5, metadata={"help": "Probability of CutMix (else MixUp)."})
    device_augmentation: bool = field(
        default=False,
        metadata={"help": "DataLoader workers only read uint8 images; crop, flip, RandAugment, normalisation and "
                  "CutMix/MixUp run on whole batches on the training device (the same distributions as the "
                  "per-image pipeline, other random draws). --fast turns it on."},
    )

    @property
    def evaluation_split(self) -> str | None:
        """``eval_split``, or None for ``"none"`` / ``""`` (no evaluation)."""
        return None if self.eval_split.lower() in ("none", "") else self.eval_split

    def __post_init__(self) -> None:
        if self.mean_std != "dataset" and self.mean_std not in MEAN_STD_PRESETS:
            raise ValueError(
                f"--mean_std must be 'dataset' or one of {sorted(MEAN_STD_PRESETS)}; got {self.mean_std!r}."
            )
        if self.randaugment_num_ops < 0 or self.crop_padding < 0 or self.image_size < 1:
            raise ValueError("randaugment_num_ops and crop_padding must be >= 0, image_size >= 1.")
        for name in ("train_subset", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be a positive number of images (omit it for all); got {value}.")
