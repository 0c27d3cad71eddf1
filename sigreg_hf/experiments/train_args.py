"""Command-line dataclasses for ``scripts/train.py`` (parsed with ``transformers.HfArgumentParser``).

``SIGRegConfig`` (TrainingArguments + ``sigreg_*``) covers training, logging, checkpointing and the
regulariser; these add the model, the data pipeline, the optimiser/schedule and the run/recipe options.
Every field can be set in a recipe YAML and overridden on the command line (``--field value``).

Notes on TrainingArguments fields: ``learning_rate``, ``weight_decay``, ``adam_beta1/2``, ``adam_epsilon``,
``max_grad_norm`` (0 disables clipping) and ``warmup_steps`` are used by the optimiser/schedule that the app's
trainer builds from :class:`OptimArguments` in its ``create_optimizer`` / ``create_scheduler`` (under every
engine); ``optim`` and ``lr_scheduler_type`` are ignored in favour of ``--optimizer`` and ``--lr_schedule``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from sigreg_hf.experiments.data.loading import DEFAULT_DATASET
from sigreg_hf.experiments.data.transforms import MEAN_STD_PRESETS
from sigreg_hf.experiments.optim import (
    MUON_PARAM_RULES,
    OPTIMIZERS,
    SCHEDULE_INTERVALS,
    SCHEDULES,
    updates_per_epoch,
)


@dataclass
class ModelArguments:
    """Which model to build."""

    model_name: str = field(
        default="resnet18_cifar",
        metadata={"help": "Registry name (sigreg_hf.models): resnet18_cifar, vit_rope, vit_peak, mlp."},
    )
    model_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON object of config overrides, e.g. \'{"hidden_size": 64}\' (recipes may give a map).'},
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "Start from a saved model folder (from_pretrained) instead of random init."},
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Keep a convolutional model's weights and inputs in channels-last memory layout (faster "
                  "convolutions on GPUs with tensor cores; same values). --fast turns it on."},
    )
    sync_batchnorm: str = field(
        default="auto",
        metadata={"help": "Batch-norm statistics over the global batch of all processes: 'auto' (on when more than "
                  "one process trains a model with BatchNorm, as the paper's one-GPU batch of 128 saw), 'true', "
                  "'false' (each process normalises its own share).", "choices": ["auto", "true", "false"]},
    )


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


@dataclass
class OptimArguments:
    """Optimiser and schedule (see ``sigreg_hf.experiments.optim``); lr/wd/betas/clipping come from the
    TrainingArguments."""

    optimizer: str = field(
        default="sgd", metadata={"help": "sgd | adamw | muon (Muon+AdamW).", "choices": list(OPTIMIZERS)}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (0: plain SGD)."})
    nesterov: bool = field(default=False, metadata={"help": "SGD Nesterov momentum."})
    no_decay_bias_norm: bool = field(
        default=False, metadata={"help": "Exempt 1-D parameters (biases, norms) from weight decay."}
    )
    muon_params: str = field(
        default="hidden",
        metadata={"help": "Muon parameters: 'hidden' (>=2-D, no stem/embeddings/head) or 'all_2d' (paper).",
                  "choices": list(MUON_PARAM_RULES)},
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon momentum."})
    muon_nesterov: bool = field(default=True, metadata={"help": "Muon Nesterov momentum."})
    muon_ns_coefficients: str = field(default="original", metadata={"help": "Newton-Schulz coefficients (timm)."})
    muon_adjust_lr_fn: str = field(
        default="original", metadata={"help": "Muon lr adjustment: original | match_rms_adamw | rms_to_rms."}
    )
    aux_learning_rate: float = field(default=1e-3, metadata={"help": "Muon optimiser: AdamW lr for the rest."})
    aux_adam_beta1: float = field(default=0.9, metadata={"help": "Muon optimiser: AdamW beta1 for the rest."})
    aux_adam_beta2: float = field(default=0.95, metadata={"help": "Muon optimiser: AdamW beta2 for the rest."})
    aux_weight_decay: float | None = field(
        default=None, metadata={"help": "Muon optimiser: AdamW weight decay for the rest (default: weight_decay)."}
    )
    aux_adam_epsilon: float = field(
        default=1e-8, metadata={"help": "Muon optimiser: AdamW eps for the rest (the reference's Muon: 1e-10)."}
    )
    lr_schedule: str = field(default="cosine", metadata={"help": "cosine | constant.", "choices": list(SCHEDULES)})
    lr_schedule_interval: str = field(
        default="epoch", metadata={"help": "Step the schedule per 'epoch' (paper) or per 'step'.",
                                   "choices": list(SCHEDULE_INTERVALS)}
    )
    eta_min: float = field(default=0.0, metadata={"help": "Cosine floor (absolute lr, all parameter groups)."})
    lr_schedule_epochs: float | None = field(
        default=None,
        metadata={"help": "Cosine horizon in epochs (default: the run's length); e.g. 400 while training 2."},
    )
    fused_optimizer: bool = field(
        default=False,
        metadata={"help": "torch's fused SGD / AdamW kernels (same update up to float rounding; Muon has none). "
                  "--fast turns it on."},
    )
    task_loss_scale: float = field(
        default=1.0,
        metadata={"help": "Multiplies the training loss of a sigreg_mode 'none' run: the reference's baselines "
                  "trained (1 - a) * CE with their row's a (0.9 or 0.99); 1 is plain CE. Evaluation is unscaled."},
    )

    def optimizer_options(self, args: TrainingArguments) -> dict[str, Any]:
        """:func:`~sigreg_hf.experiments.optim.build_optimizer`'s keyword arguments: what ``TrainingArguments``
        already names (lr, weight decay, Adam betas and eps) from ``args``, the rest from these fields."""
        return {
            "name": self.optimizer,
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "betas": (args.adam_beta1, args.adam_beta2),
            "eps": args.adam_epsilon,
            "no_decay_bias_norm": self.no_decay_bias_norm,
            "muon_params": self.muon_params,
            "muon_momentum": self.muon_momentum,
            "muon_nesterov": self.muon_nesterov,
            "muon_ns_coefficients": self.muon_ns_coefficients,
            "muon_adjust_lr_fn": self.muon_adjust_lr_fn,
            "aux_learning_rate": self.aux_learning_rate,
            "aux_betas": (self.aux_adam_beta1, self.aux_adam_beta2),
            "aux_weight_decay": self.aux_weight_decay,
            "aux_eps": self.aux_adam_epsilon,
            "fused": self.fused_optimizer,
        }

    def schedule_steps(self, args: TrainingArguments, num_train: int) -> tuple[int, int, int]:
        """``(steps_per_epoch, total_training_steps, schedule_horizon_steps)`` for ``num_train`` examples, as
        the Trainer counts steps (the horizon is ``lr_schedule_epochs`` epochs when set, else the run)."""
        per_epoch = updates_per_epoch(
            num_train,
            per_device_batch_size=args.per_device_train_batch_size,
            world_size=args.world_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            drop_last=args.dataloader_drop_last,
        )
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
        horizon = total
        if self.lr_schedule_epochs is not None:
            horizon = max(1, math.ceil(self.lr_schedule_epochs * per_epoch))
        return per_epoch, total, horizon


@dataclass
class RunArguments:
    """Recipe selection, bookkeeping and outputs."""

    recipe: str | None = field(default=None, metadata={"help": "Recipe name (see --list_recipes) or YAML path."})
    fast: bool = field(
        default=False,
        metadata={"help": "The fast path: turns on every speed option not set on the command line: --bf16 "
                  "(autocast; SIGReg statistics stay float32), --channels_last, --torch_compile, --fused_optimizer, "
                  "--device_augmentation, persistent DataLoader workers. See README 'Speed' and docs/benchmarks.md "
                  "for what each changes."},
    )
    list_recipes: bool = field(default=False, metadata={"help": "Print the recipe names and exit."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds checkpoints, deleting them (without it such a "
                  "folder must be resumed: --resume_from_checkpoint latest)."},
    )
    description: str | None = field(default=None, metadata={"help": "Recipe description (recorded)."})
    published_top1: float | None = field(default=None, metadata={"help": "The seed's published top-1 (recorded)."})
    notes: str | None = field(default=None, metadata={"help": "Recipe notes (recorded)."})
    results_file: str = field(default="results.json", metadata={"help": "Results file name inside output_dir."})
    write_plots: bool = field(default=True, metadata={"help": "Write loss/accuracy plots (PNG) to output_dir."})
    retain_host_memory: bool = field(
        default=True,
        metadata={"help": "glibc: keep freed host memory in the process for the next step instead of handing it back "
                  "to the OS (fixed malloc thresholds; no result changes; see docs/benchmarks.md)."},
    )
    final_eval: bool = field(default=True, metadata={"help": "Evaluate after training if the last step was not."})
    save_final_model: bool = field(default=True, metadata={"help": "Save model + image processor to output_dir."})


CLI_DATACLASSES = (ModelArguments, DataArguments, OptimArguments, RunArguments)


def field_names(*classes: type) -> set[str]:
    """Names of the dataclass fields of ``classes``."""
    return {f.name for cls in classes for f in fields(cls)}
