"""SIGRegTrainer: ``transformers.Trainer`` with SIGReg on tapped hidden states, through ``compute_loss``.

Objective per micro-batch (``args`` is a :class:`sigreg_hf.config.SIGRegConfig`)::

    convex   (default, the seed's rule):  (1 - a) * task + a * reg
    additive:                             task + a * reg

``a`` is ``sigreg_alpha`` warmed up linearly over ``sigreg_warmup_steps`` optimiser steps and ``reg``
the mean over tapped layers of the SIGReg statistic.

Task loss:
    * hard labels: the model's own loss (its ``problem_type`` semantics, causal-LM shifting, ignore
      index), through ``Trainer.compute_loss`` (so ``label_smoothing_factor`` / ``compute_loss_func``
      still apply); a model that returns no loss (e.g. a plain ``nn.Module`` returning logits) gets
      cross-entropy on its logits;
    * soft targets ``[B, num_classes]`` (MixUp/CutMix): popped before the forward, soft-target
      cross-entropy ``-(y * log_softmax(logits)).sum(-1).mean()`` computed here (a model's built-in
      loss would switch to BCE for float labels).

Gradient accumulation: both terms are per-micro-batch means, and the Trainer divides each micro-batch's
loss by the number of accumulation steps (``loss_is_scaled_for_ga = False``; ``num_items_in_batch`` is
never passed to the model, because some models - transformers' ResNet - ignore it and would then be
mis-scaled). The task loss of k equal micro-batches therefore equals the full batch's task loss; the
regulariser is a per-micro-batch statistic (a distribution statistic of the micro-batch, or, under
DDP, of the micro-batches of all ranks together), not a statistic of the accumulated batch.

``sigreg_mode="none"``: no hooks are registered and the plain ``Trainer.compute_loss`` is called (except
for soft targets and models without a ``labels`` argument, where the cross-entropy above is used).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments

from sigreg_hf.config import SIGRegConfig
from sigreg_hf.taps import SIGRegulariser, unwrap_model

__all__ = ["SIGRegTrainer", "soft_target_cross_entropy"]


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over samples of ``-sum_c y_c log softmax(logits)_c`` (computed in float32)."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"soft targets must have the logits' shape [B, num_classes]; got targets {tuple(targets.shape)} "
            f"for logits {tuple(logits.shape)}."
        )
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.to(log_probs.dtype) * log_probs).sum(dim=-1).mean()


def _logits_of(outputs: Any) -> Tensor:
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    raise ValueError(
        f"cannot find logits in the model's output of type {type(outputs).__name__}: return a tensor, a "
        "ModelOutput with `logits`, or a dict with 'logits'."
    )


def _mean(values: list[Tensor | float]) -> float:
    if isinstance(values[0], Tensor):
        return torch.stack([v.detach().double() for v in values]).mean().item()
    return sum(values) / len(values)


def _hard_ce(outputs: Any, labels: Tensor) -> Tensor:
    """Cross-entropy of integer labels (ignore index -100) on the outputs' logits, in float32."""
    logits = _logits_of(outputs)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


class SIGRegTrainer(Trainer):
    """``Trainer`` whose loss adds SIGReg on the tapped hidden states (see the module docstring).

    Takes the usual ``Trainer`` arguments; ``args`` must be a :class:`SIGRegConfig` (a plain
    ``TrainingArguments`` is accepted and means ``sigreg_mode="none"``).

    Logs (train, and ``eval_``-prefixed in evaluation): ``task_loss``, ``sigreg_loss`` (unweighted mean
    over layers), ``sigreg_alpha`` (effective, after warm-up) and, with ``sigreg_log_per_layer``,
    ``sigreg_loss/<layer name>``; averaged over micro-batches, logging steps and processes.
    """

    # Each micro-batch loss is a per-micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SIGRegConfig):
            if not isinstance(self.args, TrainingArguments):
                raise ValueError(f"args must be a SIGRegConfig; got {type(self.args).__name__}.")
            if getattr(self.args, "sigreg_mode", "none") != "none":
                raise ValueError("args must be a SIGRegConfig to use sigreg_mode other than 'none'.")
        # Never hand num_items_in_batch to the model (see the module docstring).
        self.model_accepts_loss_kwargs = False
        if self.args.label_names is None and not self.label_names and not self._model_takes_labels(self.model):
            # A model without a `labels` argument (a plain nn.Module returning logits): keep the `labels`
            # column (remove_unused_columns would drop it) so that this trainer computes cross-entropy.
            self.label_names = ["labels"]
        self._metrics: dict[str, defaultdict[str, list[Tensor | float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._eval_prefix: str | None = None
        self.regulariser: SIGRegulariser | None = None
        if self.sigreg_mode != "none":
            # Resolve the taps now so that a bad pattern fails before training starts.
            # check_finite=False: no per-layer host sync; a non-finite hidden state shows in the logged loss.
            self.regulariser = SIGRegulariser(self.model, self.args, check_finite=False)

    # -- configuration helpers ---------------------------------------------------------------------
    @property
    def sigreg_mode(self) -> str:
        return getattr(self.args, "sigreg_mode", "none")

    def sigreg_effective_alpha(self, step: int | None = None) -> float:
        """``sigreg_alpha`` after the linear warm-up at optimiser step ``step`` (default: now)."""
        alpha = float(self.args.sigreg_alpha)
        warmup = int(self.args.sigreg_warmup_steps)
        step = self.state.global_step if step is None else step
        if warmup > 0:
            alpha *= min(1.0, step / warmup)
        return alpha

    def combine(self, task: Tensor, reg: Tensor, alpha: float) -> Tensor:
        """The weighting rule: convex ``(1-a)*task + a*reg`` or additive ``task + a*reg``."""
        if self.args.sigreg_weighting == "additive":
            return task + alpha * reg
        return (1.0 - alpha) * task + alpha * reg

    # -- loss ---------------------------------------------------------------------------------------
    def _model_takes_labels(self, model: nn.Module) -> bool:
        base = unwrap_model(model)
        cached = getattr(self, "_takes_labels_cache", None)
        if cached is None or cached[0] is not type(base):
            params = inspect.signature(base.forward).parameters
            takes = "labels" in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
            cached = (type(base), takes)
            self._takes_labels_cache = cached
        return cached[1]

    def _is_soft(self, labels: Any) -> bool:
        if not isinstance(labels, Tensor) or not labels.is_floating_point() or labels.dim() != 2:
            return False
        config = getattr(unwrap_model(self.model), "config", None)
        problem_type = getattr(config, "problem_type", None)
        return problem_type not in ("multi_label_classification", "regression")

    def task_loss(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[Tensor, Any]:
        """``(task loss, outputs)`` for one micro-batch (see the module docstring for the semantics)."""
        labels = inputs.get("labels")
        soft = labels is not None and self._is_soft(labels)
        if labels is not None and (soft or not self._model_takes_labels(model)):
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            loss = soft_target_cross_entropy(_logits_of(outputs), labels) if soft else _hard_ce(outputs, labels)
        elif labels is None or self.label_smoother is not None or self.compute_loss_func is not None:
            # label smoothing / compute_loss_func / no labels: the plain Trainer's logic
            return super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        else:
            outputs = model(**inputs)
            loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
            if loss is None:
                loss = _hard_ce(outputs, labels)
        if isinstance(outputs, Tensor):
            outputs = {"logits": outputs}
        return loss, outputs

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, Any]:
        if self.regulariser is None:
            labels = inputs.get("labels")
            if labels is not None and (self._is_soft(labels) or not self._model_takes_labels(model)):
                loss, outputs = self.task_loss(model, inputs, num_items_in_batch)
                return (loss, outputs) if return_outputs else loss
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

        step = self.state.global_step
        regulariser = self.regulariser
        regulariser.clear()
        # Inside train()/evaluate()/predict() the hooks stay registered (stable hooks keep torch.compile
        # from recompiling); a direct call registers them for this forward only. They record only during
        # this forward, not during gradient-checkpoint recomputation in backward.
        regulariser.enabled = True
        try:
            with contextlib.nullcontext() if regulariser.is_attached else regulariser:
                task, outputs = self.task_loss(model, inputs, num_items_in_batch)
                reg = regulariser.loss(outputs, step=step, attention_mask=inputs.get("attention_mask"))
                layer_losses = regulariser.layer_losses
        finally:
            regulariser.enabled = False
            regulariser.clear()  # drop the captured activations
        alpha = self.sigreg_effective_alpha(step)
        loss = self.combine(task.float(), reg, alpha)
        self._record_metrics(model, task, reg, alpha, layer_losses)
        return (loss, outputs) if return_outputs else loss

    # -- sharing ------------------------------------------------------------------------------------
    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Push like ``Trainer.push_to_hub``, but with this project's run outputs and model card.

        Saves the model, writes ``results.json`` / plots / log CSV when missing, builds the card (with
        ``model-index``) and uploads exactly the files ``scripts/push_to_hub.py`` uploads
        (:func:`sigreg_hf.hub.trainer_push_to_hub`). ``private`` may be passed as a keyword.
        """
        from sigreg_hf.hub import trainer_push_to_hub

        return trainer_push_to_hub(
            self, commit_message=commit_message, token=token, revision=revision, private=kwargs.get("private")
        )

    # -- logging ------------------------------------------------------------------------------------
    def _record_metrics(
        self, model: nn.Module, task: Tensor, reg: Tensor, alpha: float, layer_losses: dict[str, Tensor]
    ) -> None:
        names = ["task_loss", "sigreg_loss"]
        values = [task.detach().float().reshape(()), reg.detach().float().reshape(())]
        if self.args.sigreg_log_per_layer:
            for name, value in layer_losses.items():
                names.append(f"sigreg_loss/{name}")
                values.append(value.detach().float().reshape(()).to(values[0].device))
        packed = torch.stack(values).unsqueeze(0)  # [1, M]: one all-gather for every metric
        # kept as device tensors: no host synchronisation until log()
        gathered = self.accelerator.gather(packed).reshape(-1, len(names)).mean(dim=0)
        mode = "train" if model.training else "eval"
        store = self._metrics[mode]
        for index, name in enumerate(names):
            store[name].append(gathered[index])
        store["sigreg_alpha"].append(alpha)

    # -- hook lifetime ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _hooks_attached(self) -> Iterator[None]:
        """Keep the regulariser's hooks registered for the duration (removed afterwards, even on error)."""
        regulariser = self.regulariser
        if regulariser is None or regulariser.is_attached:
            yield
            return
        regulariser.attach()
        try:
            yield
        finally:
            regulariser.detach()

    def train(self, *args: Any, **kwargs: Any):
        with self._hooks_attached():
            return super().train(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        with self._hooks_attached():
            try:
                return super().predict(*args, **kwargs)
            finally:
                self._metrics["eval"].clear()

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        self._metrics["eval"].clear()
        self._eval_prefix = metric_key_prefix
        try:
            with self._hooks_attached():
                return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._eval_prefix = None
            self._metrics["eval"].clear()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Merge the averaged SIGReg metrics into ``logs`` (prefixed in evaluation), then clear them."""
        mode = "eval" if self._eval_prefix is not None else "train"
        averaged = {name: _mean(vals) for name, vals in self._metrics[mode].items() if vals}
        if mode == "eval":
            averaged = {f"{self._eval_prefix}_{name}": value for name, value in averaged.items()}
        self._metrics[mode].clear()
        logs.update(averaged)  # in place: evaluate() returns this very dict
        super().log(logs, start_time)
