"""Command-line dataclasses for ``scripts/train.py`` (parsed with ``transformers.HfArgumentParser``).

``SIGRegConfig`` (TrainingArguments + ``sigreg_*``) covers training, logging, checkpointing and the
regulariser; these add the model, the data pipeline (:class:`DataArguments`, defined beside the pipeline that
reads it), the optimiser/schedule and the run/recipe options.
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

from sigreg_hf.experiments.data.arguments import DataArguments
from sigreg_hf.experiments.optim import (
    MUON_PARAM_RULES,
    OPTIMIZERS,
    SCHEDULE_INTERVALS,
    SCHEDULES,
    updates_per_epoch,
)

__all__ = ["DataArguments", "ModelArguments", "OptimArguments", "RunArguments"]


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
