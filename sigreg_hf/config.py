"""SIGReg options: :class:`SIGRegArguments` (the ``sigreg_*`` fields alone) and :class:`SIGRegConfig`.

``SIGRegConfig`` is ``SIGRegArguments`` on ``transformers.TrainingArguments``; any other training-argument
class combines the same way (TRL's ``SFTConfig``, ``Seq2SeqTrainingArguments``)::

    @dataclass
    class SFTSIGRegConfig(SIGRegArguments, SFTConfig):
        pass

Every ``sigreg_*`` field parses from the command line and from YAML/JSON through
``transformers.HfArgumentParser`` like any other training argument, e.g.::

    parser = HfArgumentParser(SIGRegConfig)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", "out", "--sigreg_mode", "weak",
                                                  "--sigreg_alpha", "0.1", "--sigreg_layers", "auto"])

The options are validated here, once, in ``__post_init__``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from sigreg_hf.redaction import without_secrets

__all__ = [
    "SIGREG_MODES",
    "SIGREG_POOLINGS",
    "SIGREG_SKETCH_TYPES",
    "SIGREG_STRONG_NORMALIZATIONS",
    "SIGREG_WEIGHTINGS",
    "SIGRegArguments",
    "SIGRegConfig",
]

SIGREG_MODES = ("none", "weak", "strong")
SIGREG_WEIGHTINGS = ("convex", "additive")
SIGREG_POOLINGS = ("auto", "mean", "cls", "flatten", "none")
SIGREG_SKETCH_TYPES = ("gaussian", "orthonormal")
SIGREG_STRONG_NORMALIZATIONS = ("seed", "per_sample")


def normalise_layers(layers: object) -> list[str]:
    """Turn ``"auto"``, ``["auto"]``, a comma-separated string or a list of regexes into a list of regexes.

    ``["auto"]`` stays ``["auto"]`` (resolved later against the model).
    """
    if layers is None:
        return ["auto"]
    if isinstance(layers, str):
        items = [part.strip() for part in layers.split(",")] if "," in layers else [layers.strip()]
    elif isinstance(layers, (list, tuple)):
        items = []
        for item in layers:
            if not isinstance(item, str):
                raise ValueError(
                    f"sigreg_layers must be 'auto' or a list of module-name regexes (str); got item {item!r}."
                )
            items.append(item.strip())
    else:
        raise ValueError(
            f"sigreg_layers must be 'auto' or a list of module-name regexes; got {type(layers).__name__}."
        )
    items = [item for item in items if item]
    if not items:
        raise ValueError("sigreg_layers is empty; pass 'auto' or at least one module-name regex.")
    if "auto" in items and len(items) > 1:
        raise ValueError(f"sigreg_layers: 'auto' cannot be combined with explicit patterns; got {items!r}.")
    return items


@dataclass
class SIGRegArguments:
    """The SIGReg options (``sigreg_*`` fields) of :class:`sigreg_hf.trainer.SIGRegMixin`, on their own.

    Put it first among the bases of a training-argument dataclass: ``class C(SIGRegArguments, SFTConfig)``.
    The regularised objective is ``(1 - a) * task + a * reg`` (``sigreg_weighting="convex"``, the seed's
    rule) or ``task + a * reg`` (``"additive"``), where ``a`` is ``sigreg_alpha`` (linearly warmed up over
    ``sigreg_warmup_steps`` optimiser steps) and ``reg`` is the mean over the tapped layers of the
    strong or weak SIGReg statistic of each layer's hidden state pooled to ``[N, C]``.
    ``sigreg_mode="none"`` trains bit for bit like the parent trainer (no hooks, no extra terms).
    """

    sigreg_mode: str = field(
        default="none",
        metadata={
            "help": "SIGReg statistic: 'none' (plain training), 'weak' (covariance) or 'strong' (ECF).",
            "choices": list(SIGREG_MODES),
        },
    )
    sigreg_alpha: float = field(
        default=0.1,
        metadata={"help": "Weight a of the regulariser (paper: 0.1 weak, 0.01 strong on CIFAR-100)."},
    )
    sigreg_weighting: str = field(
        default="convex",
        metadata={
            "help": "'convex': (1-a)*task + a*reg (the seed's rule); 'additive': task + a*reg.",
            "choices": list(SIGREG_WEIGHTINGS),
        },
    )
    sigreg_layers: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={
            "help": "Module-name regexes (re.fullmatch on model.named_modules()) to tap, or 'auto' for "
            "the architecture's preset (each residual/transformer block, each hidden Linear)."
        },
    )
    sigreg_pooling: str = field(
        default="auto",
        metadata={
            "help": "Reduction of hidden states to [N, C]: 'auto' (per shape/architecture), 'mean', "
            "'cls', 'flatten' or 'none' (already [N, C]).",
            "choices": list(SIGREG_POOLINGS),
        },
    )
    sigreg_mask_padding: bool = field(
        default=True,
        metadata={
            "help": "Pool token states [B, L, D] over real tokens only, using the batch's attention_mask "
            "(mean of real tokens; 'flatten' keeps real tokens). False: padding counts like any token."
        },
    )
    sigreg_sketch_dim: int = field(
        default=64,
        metadata={"help": "Sketch dimension k (weak) and number of random slices (strong)."},
    )
    sigreg_sketch_type: str = field(
        default="gaussian",
        metadata={
            "help": "Random matrix of the statistic: 'gaussian' (the seed's randn(k, C)/sqrt(C) sketch; weak's "
            "minimiser is then about 0.89 I at C=512, k=64) or 'orthonormal' (orthonormal rows: weak is "
            "unbiased; strong gets mutually orthogonal slices, needs k <= C).",
            "choices": list(SIGREG_SKETCH_TYPES),
        },
    )
    sigreg_num_points: int = field(
        default=17, metadata={"help": "Strong: trapezoid knots on [-t_max, t_max] (the seed's 17)."}
    )
    sigreg_t_max: float = field(
        default=5.0, metadata={"help": "Strong: integration half-width (the seed's 5)."}
    )
    sigreg_warmup_steps: int = field(
        default=0, metadata={"help": "Linear warm-up of alpha from 0 over this many optimiser steps."}
    )
    sigreg_log_per_layer: bool = field(
        default=False, metadata={"help": "Also log sigreg_loss/<layer> for every tapped layer."}
    )
    sigreg_in_eval: bool = field(
        default=True,
        metadata={
            "help": "Compute the regulariser in evaluation too (logged as eval_sigreg_loss; eval_loss is always "
            "the task loss). False: evaluation is the parent trainer's alone."
        },
    )
    sigreg_strong_normalization: str = field(
        default="seed",
        metadata={
            "help": "Strong statistic: 'seed' (N times the integral, the seed's definition: its size grows with "
            "the number N of samples per statistic, i.e. with the micro-batch, the number of processes and the "
            "evaluation batch) or 'per_sample' (the integral alone: a strength independent of N).",
            "choices": list(SIGREG_STRONG_NORMALIZATIONS),
        },
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # TrainingArguments (or SFTConfig, ...) next in the MRO
            parent()
        validate_sigreg_options(
            mode=self.sigreg_mode,
            alpha=self.sigreg_alpha,
            weighting=self.sigreg_weighting,
            pooling=self.sigreg_pooling,
            sketch_dim=self.sigreg_sketch_dim,
            sketch_type=self.sigreg_sketch_type,
            num_points=self.sigreg_num_points,
            t_max=self.sigreg_t_max,
            warmup_steps=self.sigreg_warmup_steps,
            strong_normalization=self.sigreg_strong_normalization,
            mask_padding=self.sigreg_mask_padding,
        )
        for name in ("sigreg_log_per_layer", "sigreg_in_eval"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}.")
        self.sigreg_layers = normalise_layers(self.sigreg_layers)

    # Pickling is how the Trainer writes training_args.bin into every checkpoint and the run folder (which a
    # push uploads): a pickled copy never carries a secret (``hub_token``, any ``*_token`` string). Copies in
    # memory keep them, so a copied config can still push.
    def __getstate__(self) -> dict[str, Any]:
        return without_secrets(self.__dict__)

    def __copy__(self) -> SIGRegArguments:
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> SIGRegArguments:
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        clone.__dict__.update({key: copy.deepcopy(value, memo) for key, value in self.__dict__.items()})
        return clone


@dataclass
class SIGRegConfig(SIGRegArguments, TrainingArguments):
    """``transformers.TrainingArguments`` plus the SIGReg options, for :class:`sigreg_hf.trainer.SIGRegTrainer`.

    See :class:`SIGRegArguments` for the objective and the options.
    """


def validate_sigreg_options(
    *,
    mode: str | None = None,
    alpha: float | None = None,
    weighting: str | None = None,
    pooling: str | None = None,
    sketch_dim: int | None = None,
    num_points: int | None = None,
    sketch_type: str | None = None,
    t_max: float | None = None,
    warmup_steps: int | None = None,
    strong_normalization: str | None = None,
    mask_padding: bool | None = None,
    prefix: str = "sigreg_",
) -> None:
    """Raise a ValueError naming the bad option (``prefix`` + its name) and its allowed values.

    Options left None are not checked: the config checks all of its fields, :class:`~sigreg_hf.taps.SIGRegulariser`
    the ones it takes (with ``prefix=""``, its keyword names).
    """
    choices = (
        ("mode", mode, SIGREG_MODES),
        ("weighting", weighting, SIGREG_WEIGHTINGS),
        ("pooling", pooling, SIGREG_POOLINGS),
        ("sketch_type", sketch_type, SIGREG_SKETCH_TYPES),
        ("strong_normalization", strong_normalization, SIGREG_STRONG_NORMALIZATIONS),
    )
    for name, value, allowed in choices:
        if value is not None and value not in allowed:
            raise ValueError(f"{prefix}{name} must be one of {allowed}; got {value!r}.")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"{prefix}alpha must be a finite number; got {alpha!r}.")
        if weighting == "convex" and not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"{prefix}alpha must lie in [0, 1] for the convex weighting (1-a)*task + a*reg; got {alpha}. "
                f"Use {prefix}weighting='additive' for task + a*reg with a > 1."
            )
        if weighting == "additive" and alpha < 0:
            raise ValueError(f"{prefix}alpha must be >= 0; got {alpha}.")
    for name, value, minimum in (("sketch_dim", sketch_dim, 1), ("num_points", num_points, 2),
                                 ("warmup_steps", warmup_steps, 0)):  # fmt: skip
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ValueError(f"{prefix}{name} must be an integer >= {minimum}; got {value!r}.")
    if t_max is not None and (
        isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not math.isfinite(t_max) or t_max <= 0
    ):
        raise ValueError(f"{prefix}t_max must be a positive finite number; got {t_max!r}.")
    if mask_padding is not None and not isinstance(mask_padding, bool):
        raise ValueError(f"{prefix}mask_padding must be True or False; got {mask_padding!r}.")
