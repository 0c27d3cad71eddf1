"""Optimiser and learning-rate schedule factories: SGD, AdamW, and the Muon+AdamW hybrid.

The hybrid is ONE ``torch.optim.Optimizer`` (:class:`timm.optim.Muon`) with two parameter groups:

* a Muon group (``use_muon=True``): lr ``learning_rate`` (1e-2 in the paper), momentum 0.95, Nesterov,
  Keller Jordan's original Newton-Schulz coefficients and lr adjustment ``sqrt(max(1, out/in))`` -- the
  behaviour of ``torch.optim.Muon``'s defaults and the original Muon;
* an AdamW group (``use_fallback=True``): its own lr (``aux_learning_rate``, 1e-3), betas
  (``aux_betas``, (0.9, 0.95)) and eps (``aux_eps``, 1e-8; the reference's Muon package uses 1e-10).

Because it is one optimizer, the Trainer's single scheduler, gradient clipping and checkpointing
(``optimizer.pt``) cover both halves.

Which parameters Muon gets (``muon_params``):

* ``"hidden"`` (library default): every parameter with >= 2 dimensions that is not the input stem /
  embedding or the output head, i.e. whose name does not match :data:`DEFAULT_MUON_EXCLUDE` (or the
  model's own ``muon_exclude_patterns`` class attribute, regexes matched with ``re.fullmatch`` against
  ``named_parameters()`` names). Conv weights are flattened to ``(out, in*k*k)`` by timm's Muon.
* ``"all_2d"``: every parameter with exactly 2 dimensions, head included -- what the paper's notebooks did
  ("Muon on every 2-D weight"); conv kernels, position embeddings, CLS token, biases and norms go to AdamW.

Weight decay applies to every parameter (as the paper's plain ``torch.optim`` optimisers did) unless
``no_decay_bias_norm=True`` exempts 1-D parameters (biases, norm scales).

Schedules (:func:`build_lr_scheduler`): ``"cosine"`` from each group's base lr to ``eta_min`` (absolute,
the same for all groups, like ``CosineAnnealingLR``), stepped per epoch (the paper: constant within an
epoch) or per optimiser step; ``"constant"``. Optional linear warmup.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw", "muon")
SCHEDULES = ("cosine", "constant")
SCHEDULE_INTERVALS = ("epoch", "step")
MUON_PARAM_RULES = ("hidden", "all_2d")

#: Parameter-name regexes (``re.fullmatch``) kept out of Muon by the ``"hidden"`` rule: stems/embeddings
#: (patch, position, token embeddings, CLS token, first conv) and heads/classifiers.
DEFAULT_MUON_EXCLUDE: tuple[str, ...] = (
    r"(.*\.)?(\w*embed\w*|cls_token|register_tokens|stem\w*|conv_stem)(\..*)?",
    r"(.*\.)?(head|heads|classifier|lm_head|fc_out)(\..*)?",
    r"(conv1|bn1|fc)\..*",  # torchvision-style ResNet: top-level stem conv and final fc
)


def _match_any(name: str, patterns: Iterable[str]) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def split_muon_parameters(
    model: nn.Module, *, rule: str = "hidden", exclude_patterns: Sequence[str] | None = None
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split trainable ``model`` parameters into ``(muon, adamw)`` lists of ``(name, parameter)``.

    See the module docstring for the rules. ``exclude_patterns`` replaces the model's
    ``muon_exclude_patterns`` attribute and :data:`DEFAULT_MUON_EXCLUDE` for the ``"hidden"`` rule.
    """
    if rule not in MUON_PARAM_RULES:
        raise ValueError(f"Unknown muon_params rule {rule!r}; choose one of {MUON_PARAM_RULES}.")
    if exclude_patterns is None:
        exclude_patterns = getattr(model, "muon_exclude_patterns", None) or DEFAULT_MUON_EXCLUDE
    muon, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if rule == "all_2d":
            use = p.ndim == 2
        else:
            use = p.ndim >= 2 and min(p.shape[:2]) > 1 and not _match_any(name, exclude_patterns)
        (muon if use else rest).append((name, p))
    return muon, rest


def _decay_groups(
    named: list[tuple[str, nn.Parameter]], weight_decay: float, no_decay_bias_norm: bool, **extra: Any
) -> list[dict[str, Any]]:
    if not named:
        return []
    if not no_decay_bias_norm:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay, **extra}]
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, **extra})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    learning_rate: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    no_decay_bias_norm: bool = False,
    muon_params: str = "hidden",
    muon_exclude_patterns: Sequence[str] | None = None,
    muon_momentum: float = 0.95,
    muon_nesterov: bool = True,
    muon_ns_coefficients: str = "original",
    muon_adjust_lr_fn: str = "original",
    aux_learning_rate: float = 1e-3,
    aux_betas: tuple[float, float] = (0.9, 0.95),
    aux_weight_decay: float | None = None,
    aux_eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Build one optimizer for ``model``.

    Args:
        name: ``"sgd"`` (``momentum``/``nesterov``; momentum 0 is plain SGD), ``"adamw"`` (``betas``,
            ``eps``) or ``"muon"`` (Muon on the selected matrices at ``learning_rate`` + AdamW on the rest
            at ``aux_learning_rate`` / ``aux_betas`` / ``aux_weight_decay`` (default ``weight_decay``)).
        learning_rate: base lr (Muon's for ``"muon"``).
        fused: torch's fused kernels for SGD / AdamW (one kernel for all parameters instead of a loop of
            ``foreach`` ops; the same update up to float rounding). Muon (timm's) has none and ignores it.

    Raises:
        ValueError: unknown name or invalid hyper-parameters; ``"muon"`` with no matrix parameters.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
    if learning_rate < 0 or weight_decay < 0:
        raise ValueError(f"learning_rate and weight_decay must be >= 0 (got {learning_rate}, {weight_decay}).")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("The model has no trainable parameters.")
    if name == "sgd":
        groups = _decay_groups(named, weight_decay, no_decay_bias_norm)
        return torch.optim.SGD(
            groups, lr=learning_rate, momentum=momentum, nesterov=nesterov and momentum > 0, fused=fused or None
        )
    if name == "adamw":
        groups = _decay_groups(named, weight_decay, no_decay_bias_norm)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), eps=eps, fused=fused or None)

    from timm.optim import Muon

    muon_named, rest_named = split_muon_parameters(
        model, rule=muon_params, exclude_patterns=muon_exclude_patterns
    )
    if not muon_named:
        raise ValueError(
            f"Muon selected but no parameter qualifies under muon_params={muon_params!r}; use another optimizer."
        )
    aux_wd = weight_decay if aux_weight_decay is None else aux_weight_decay
    groups = [
        {
            "params": [p for _, p in muon_named],
            "lr": learning_rate,
            "weight_decay": weight_decay,
            "use_muon": True,
            "momentum": muon_momentum,
            "nesterov": muon_nesterov,
        }
    ]
    groups += _decay_groups(
        rest_named, aux_wd, no_decay_bias_norm, lr=aux_learning_rate, betas=tuple(aux_betas), eps=aux_eps,
        use_fallback=True, nesterov=False, fallback_lr_scale=1.0,
    )
    return Muon(
        groups,
        lr=learning_rate,
        weight_decay=weight_decay,
        momentum=muon_momentum,
        nesterov=muon_nesterov,
        ns_coefficients=muon_ns_coefficients,
        adjust_lr_fn=muon_adjust_lr_fn,
        betas=tuple(aux_betas),
    )


class OptimizerFactory:
    """A factory for ``Trainer(optimizer_cls_and_kwargs=(OptimizerFactory, kwargs))``.

    transformers instantiates it with no arguments and calls it as ``factory(model, **kwargs)``: a plain
    ``Trainer`` gets the optimiser this module builds, under any engine. (The experiments app's trainer
    overrides ``create_optimizer`` instead.)
    """

    def __call__(self, model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
        return build_optimizer(model, **kwargs)


class _LrLambda:
    """Multiplicative lr factor for one parameter group (a class so LambdaLR can checkpoint it)."""

    def __init__(
        self,
        base_lr: float,
        *,
        schedule: str,
        total_steps: int,
        steps_per_epoch: int,
        interval: str,
        eta_min: float,
        warmup_steps: int,
    ) -> None:
        self.base_lr = base_lr
        self.schedule = schedule
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.interval = interval
        self.eta_min = eta_min
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if self.base_lr == 0:
            return 0.0
        factor = 1.0
        if self.schedule == "cosine":
            if self.interval == "epoch":
                progress = (step // self.steps_per_epoch) / max(1.0, self.total_steps / self.steps_per_epoch)
            else:
                progress = step / max(1, self.total_steps)
            progress = min(progress, 1.0)
            lr = self.eta_min + (self.base_lr - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
            factor = lr / self.base_lr
        if self.warmup_steps > 0 and step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str = "cosine",
    total_steps: int,
    steps_per_epoch: int,
    interval: str = "epoch",
    eta_min: float = 0.0,
    warmup_steps: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimiser step (as the Trainer does) implementing the schedule.

    ``"cosine"`` with ``interval="epoch"`` holds the lr constant within an epoch and follows
    ``eta_min + (base - eta_min) * (1 + cos(pi * epoch / epochs)) / 2`` with
    ``epochs = total_steps / steps_per_epoch`` -- ``CosineAnnealingLR(T_max=epochs, eta_min)`` stepped
    per epoch, per parameter group. ``interval="step"`` uses the step instead of the epoch.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown lr schedule {schedule!r}; choose one of {SCHEDULES}.")
    if interval not in SCHEDULE_INTERVALS:
        raise ValueError(f"Unknown schedule interval {interval!r}; choose one of {SCHEDULE_INTERVALS}.")
    if total_steps < 1 or steps_per_epoch < 1:
        raise ValueError(f"total_steps and steps_per_epoch must be >= 1 (got {total_steps}, {steps_per_epoch}).")
    if eta_min < 0:
        raise ValueError(f"eta_min must be >= 0, got {eta_min}.")
    lambdas = [
        _LrLambda(
            float(group.get("initial_lr", group["lr"])),
            schedule=schedule,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            interval=interval,
            eta_min=eta_min,
            warmup_steps=warmup_steps,
        )
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def updates_per_epoch(
    num_examples: int,
    *,
    per_device_batch_size: int,
    world_size: int = 1,
    gradient_accumulation_steps: int = 1,
    drop_last: bool = False,
) -> int:
    """Optimiser steps per epoch as the Trainer counts them (accelerate pads to even batches per rank)."""
    global_batch = per_device_batch_size * world_size
    batches = num_examples // global_batch if drop_last else math.ceil(num_examples / global_batch)
    steps = batches // gradient_accumulation_steps + int(batches % gradient_accumulation_steps > 0)
    return max(1, steps)
