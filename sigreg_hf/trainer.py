"""SIGRegMixin: SIGReg on tapped hidden states for any ``transformers.Trainer`` subclass; SIGRegTrainer.

Use it on ``Trainer`` (:class:`SIGRegTrainer`), ``Seq2SeqTrainer``, TRL's ``SFTTrainer`` or your own::

    @dataclass
    class SFTSIGRegConfig(SIGRegArguments, SFTConfig):
        pass

    class SFTSIGRegTrainer(SIGRegMixin, SFTTrainer):
        pass

Objective of a training micro-batch (``args`` carries :class:`sigreg_hf.config.SIGRegArguments`)::

    convex   (default, the seed's rule):  (1 - a) * task + a * reg
    additive:                             task + a * reg

``task`` is the parent's ``compute_loss`` (one ``super()`` call: the parent's loss types, label smoothing,
``compute_loss_func``, token normalisation and metrics stay as they are), ``a`` is ``sigreg_alpha`` warmed up
linearly over ``sigreg_warmup_steps`` optimiser steps and ``reg`` the mean over tapped layers of the SIGReg
statistic of the micro-batch (of all processes' micro-batches together under DDP).

Gradient accumulation and processes, as transformers >= 5.19 does it: when the parent's loss is already
scaled for accumulation (normalised by ``num_items_in_batch``, the token count of the whole accumulated
batch on every process, and multiplied by the number of processes), ``reg`` is added divided by the number
of accumulation steps and never multiplied by the number of processes (TRL's rule for its MoE auxiliary
loss); otherwise ``Trainer.training_step`` divides the whole loss by the accumulation steps. Either way
``reg`` weighs ``a`` per optimiser step whatever the accumulation count and the number of processes.

Evaluation: ``eval_loss`` is the task loss (what ``metric_for_best_model`` and early stopping see);
``eval_sigreg_loss`` is logged beside it unless ``sigreg_in_eval=False``.

``sigreg_mode="none"``: no hooks, and ``compute_loss`` is the parent's: training is bit for bit the parent's.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard
from torch import Tensor, nn
from transformers import Trainer

from sigreg_hf.config import SIGRegArguments
from sigreg_hf.launch import check_launch
from sigreg_hf.taps import SIGRegulariser, unwrap_model

__all__ = ["SIGRegMixin", "SIGRegTrainer", "sigreg_card_section"]

logger = logging.getLogger(__name__)

#: Hub task of a model from its class name's head suffix (for ``model-index``).
_TASK_OF_HEAD = (
    ("ForImageClassification", "image-classification"),
    ("ForSequenceClassification", "text-classification"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForSeq2SeqLM", "text2text-generation"),
)


def _host_floats(items: list[Tensor | float]) -> list[float]:
    """``items`` as Python floats, the tensors among them read from their device in one transfer."""
    tensors = [item for item in items if isinstance(item, Tensor)]
    if not tensors:
        return [float(item) for item in items]
    device = tensors[0].device
    read = iter(torch.stack([t.detach().double().reshape(()).to(device) for t in tensors]).tolist())
    return [next(read) if isinstance(item, Tensor) else float(item) for item in items]


def _reduce_metric(
    entries: list[tuple[Tensor | float, Tensor | float]], *, total: bool = False, nan_inf_filter: bool = False
) -> float | None:
    """The weighted mean of ``(value, weight)`` entries (``total``: the weighted sum); None when nothing counts.

    A value of weight 0 never reaches the result, not even a non-finite one (a skipped batch's statistic).
    ``nan_inf_filter`` (the Trainer's ``logging_nan_inf_filter``, as it treats its own loss): non-finite values
    are left out while finite ones remain (a batch without a target token has a NaN task loss).
    """
    floats = _host_floats([item for entry in entries for item in entry])
    kept = [(value, weight) for value, weight in zip(floats[::2], floats[1::2], strict=True) if weight]
    if nan_inf_filter and any(math.isfinite(value) for value, _ in kept):
        kept = [(value, weight) for value, weight in kept if math.isfinite(value)]
    weighted = sum(value * weight for value, weight in kept)
    if total:
        return weighted or None
    return weighted / sum(weight for _, weight in kept) if kept else None


def _modality(model: nn.Module) -> str:
    """What the model reads, from its ``main_input_name``: images, text, audio or (default) inputs."""
    name = getattr(unwrap_model(model), "main_input_name", None)
    return {"pixel_values": "images", "input_ids": "text", "input_features": "audio", "input_values": "audio"}.get(
        name, "inputs"
    )


def sigreg_card_section(args: SIGRegArguments, regulariser: SIGRegulariser | None, model: nn.Module) -> str:
    """The model card's "SIGReg" section (markdown) for a run with ``args`` on ``model``."""
    if regulariser is None:
        return (
            "## SIGReg\n\nTrained with `sigreg_hf` with `sigreg_mode=\"none\"`: no regulariser, the plain "
            "task loss (a baseline of a SIGReg comparison).\n"
        )
    modality = _modality(model)
    rule = "(1 - a) * task + a * reg" if args.sigreg_weighting == "convex" else "task + a * reg"
    statistic = (
        "weak (sketched covariance towards the identity)"
        if regulariser.mode == "weak"
        else f"strong (sliced Epps-Pulley against N(0, I), {args.sigreg_strong_normalization} normalisation)"
    )
    layers = ", ".join(f"`{name}`" for name in regulariser.layer_names)
    return (
        "## SIGReg\n\n"
        f"Trained on {modality} with SIGReg (Sketched Isotropic Gaussian Regularization, `sigreg_hf`): the "
        f"{statistic} statistic of the hidden states of {layers} (pooled with `{regulariser.pooling}`, "
        f"{regulariser.sketch_dim} {'sketch rows' if regulariser.mode == 'weak' else 'slices'}, "
        f"{regulariser.sketch_type} sketch), added to the task loss as `{rule}` with a = {args.sigreg_alpha}"
        + (f", warmed up over {args.sigreg_warmup_steps} steps" if args.sigreg_warmup_steps else "")
        + ".\nThe regulariser shapes training only: the saved model runs like any model of its class.\n"
    )


class SIGRegMixin:
    """Adds SIGReg to a ``transformers.Trainer`` subclass (see the module docstring). Put it first in the bases.

    Args:
        regulariser: a :class:`sigreg_hf.taps.SIGRegulariser` built by the caller (on the model the trainer
            trains) instead of the one ``args`` describes; its ``mode`` must equal ``args.sigreg_mode``.
        *args, **kwargs: the parent trainer's arguments; ``args`` should carry
            :class:`sigreg_hf.config.SIGRegArguments` (plain training arguments mean ``sigreg_mode="none"``).

    Logs (train, and prefixed like ``eval_loss`` in evaluation): ``task_loss``, ``sigreg_loss`` (unweighted
    mean over layers), ``sigreg_alpha`` (after warm-up) and, with ``sigreg_log_per_layer``,
    ``sigreg_loss/<layer name>``; averaged over micro-batches, logging steps and processes. They are kept
    apart from a parent's own metrics (TRL's ``_metrics``).
    """

    def __init__(self, *args: Any, regulariser: SIGRegulariser | None = None, **kwargs: Any) -> None:
        self._tag_names = list(dict.fromkeys([*getattr(self, "_tag_names", []), "sigreg"]))
        super().__init__(*args, **kwargs)
        # refuse launches that would train wrong in silence (processes that are not one job; DataParallel)
        check_launch(self.args, hooks_on_model=self.sigreg_mode != "none")
        # mode -> metric -> (value, weight) entries, reduced when logged
        self._sigreg_metrics: dict[str, defaultdict[str, list[tuple[Tensor | float, Tensor | float]]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._sigreg_eval_prefix: str | None = None
        self._sigreg_in_train = False
        self._sigreg_warned: set[str] = set()
        self._sigreg_user_regulariser = regulariser is not None
        if regulariser is not None:
            if not isinstance(self.args, SIGRegArguments):
                raise ValueError(
                    f"regulariser= needs args with the sigreg_* options (SIGRegArguments); got "
                    f"{type(self.args).__name__}. Use SIGRegConfig or a class(SIGRegArguments, ...)."
                )
            if regulariser.mode != self.sigreg_mode:
                raise ValueError(
                    f"the regulariser passed has mode={regulariser.mode!r} but args.sigreg_mode is "
                    f"{self.sigreg_mode!r}: set sigreg_mode={regulariser.mode!r}."
                )
        if self.sigreg_mode == "none":
            self.regulariser: SIGRegulariser | None = None
        else:
            # Resolve the taps now so that a bad pattern fails before training starts. check_finite=False:
            # no per-layer host sync; a non-finite hidden state shows in the logged loss.
            self.regulariser = regulariser or SIGRegulariser.from_args(self.model, self.args, check_finite=False)

    # -- configuration --------------------------------------------------------------------------------
    @property
    def sigreg_mode(self) -> str:
        """``args.sigreg_mode``; ``"none"`` for training arguments without the SIGReg options."""
        return getattr(self.args, "sigreg_mode", "none") if isinstance(self.args, SIGRegArguments) else "none"

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

    def _task_loss_is_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        """Whether the parent's loss is already scaled for accumulation (``Trainer.training_step``'s rule)."""
        declared = getattr(self, "loss_is_scaled_for_ga", None)  # transformers >= 5.19
        if declared is not None:
            return bool(declared)
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def _active_regulariser(self, model: nn.Module) -> SIGRegulariser | None:
        """The regulariser for this forward (following the trained model), or None for the parent's loss."""
        if self.sigreg_mode == "none":
            return None
        if not model.training and not self.args.sigreg_in_eval:
            return None
        regulariser = self.regulariser
        if regulariser is None or unwrap_model(regulariser.model) is not unwrap_model(self.model):
            # model_init / hyperparameter_search replaced the model (or the mode changed): hooks follow it
            if self._sigreg_user_regulariser and regulariser is not None:
                raise ValueError(
                    "the regulariser passed to the trainer hooks a model the trainer no longer trains (model_init "
                    "built a new one): let the trainer build it from args instead of passing regulariser=."
                )
            attached = regulariser is not None and regulariser.is_attached
            if regulariser is not None:
                regulariser.detach()
            regulariser = SIGRegulariser.from_args(self.model, self.args, check_finite=False)
            self.regulariser = regulariser
            if attached or self._sigreg_in_train:
                regulariser.attach()
        elif self._sigreg_in_train and not regulariser.is_attached:
            regulariser.attach()
        return regulariser

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._sigreg_warned:
            self._sigreg_warned.add(key)
            logger.warning(message)

    # -- loss -----------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The parent's loss plus the regulariser (see the module docstring)."""
        regulariser = self._active_regulariser(model)
        if regulariser is None:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        training = model.training
        step = self.state.global_step
        attention_mask = inputs.get("attention_mask")  # read first: a parent may pop or change inputs
        # Ask the parent for the outputs only when needed (TRL's SFTTrainer runs an extra forward for them).
        want_outputs = return_outputs or (
            type(regulariser).select_hidden_states is not SIGRegulariser.select_hidden_states
        )
        regulariser.clear()
        regulariser.enabled = True
        # Training: record only the gradient-carrying forward (a parent may add a no-grad one for metrics).
        regulariser.grad_only = training and torch.is_grad_enabled()
        try:
            # Inside train()/evaluate()/predict() the hooks stay registered (stable hooks keep torch.compile
            # from recompiling); a direct call registers them for this call only.
            with contextlib.nullcontext() if regulariser.is_attached else regulariser:
                result = super().compute_loss(
                    model, inputs, return_outputs=want_outputs, num_items_in_batch=num_items_in_batch
                )
                task, outputs = result if want_outputs else (result, None)
                reg = regulariser.loss(outputs, step=step, attention_mask=attention_mask)
                layer_losses = regulariser.layer_losses
                counted = regulariser.last_batch_counted  # same on every rank (global N); maybe on the device
        finally:
            regulariser.enabled = False
            regulariser.grad_only = False
            regulariser.clear()  # drop the captured activations
        alpha = self.sigreg_effective_alpha(step)
        if training:
            scaled = self._task_loss_is_scaled_for_ga(num_items_in_batch)
            steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
            steps = steps if scaled else 1
            loss = self.combine(task.float(), reg / steps, alpha)
            task_metric = task.detach().float() * steps  # the micro-batch's share, back on the batch's scale
        else:
            loss = task
            task_metric = task.detach().float()
        self._record_sigreg_metrics(model, task_metric, reg, alpha, layer_losses, counted)
        return (loss, outputs) if return_outputs else loss

    # -- model card -------------------------------------------------------------------------------------
    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The parent's card (tagged ``sigreg``) plus a SIGReg section and, with evaluation results, ``model-index``."""
        tags = kwargs.get("tags")
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        kwargs["tags"] = list(dict.fromkeys([*tags, "sigreg"]))
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero():
            return
        path = Path(self.args.output_dir) / "README.md"
        if not path.exists():
            return
        card = ModelCard.load(path)
        if isinstance(self.args, SIGRegArguments):
            card.text = card.text.rstrip() + "\n\n" + sigreg_card_section(self.args, self.regulariser, self.model)
        self._add_model_index(card, kwargs.get("dataset"))
        card.save(path)

    def _add_model_index(self, card: ModelCard, dataset: Any) -> None:
        """Fill ``model-index`` from the last evaluation when the parent's card has no results there."""
        if card.data.eval_results:
            return
        evals = [e for e in self.state.log_history if "eval_loss" in e]
        if not evals:
            return
        metrics = {
            key[len("eval_"):]: float(value)
            for key, value in evals[-1].items()
            if key.startswith("eval_") and isinstance(value, (int, float))
            and not key.endswith(("_runtime", "_per_second"))
        }  # fmt: skip
        name = type(unwrap_model(self.model)).__name__
        task = next((task for suffix, task in _TASK_OF_HEAD if name.endswith(suffix)), "other")
        dataset_name = dataset[0] if isinstance(dataset, (list, tuple)) and dataset else dataset
        dataset_name = str(dataset_name) if dataset_name else "evaluation set"
        card.data.model_name = card.data.model_name or Path(self.args.hub_model_id or self.args.output_dir).name
        card.data.eval_results = [
            EvalResult(task_type=task, dataset_type=dataset_name, dataset_name=dataset_name, metric_type=key,
                       metric_name=key, metric_value=value)
            for key, value in metrics.items()
        ]  # fmt: skip

    # -- metrics ----------------------------------------------------------------------------------------
    def log_metric(self, name: str, value: Tensor | float) -> None:
        """Add one value of ``name`` for the current mode (averaged and logged with the SIGReg metrics).

        Pass a device tensor already reduced over processes (e.g. ``accelerator.gather(x).mean()``) to avoid a
        host synchronisation per step.
        """
        self._add_metric(name, value)

    def _add_metric(self, name: str, value: Tensor | float, weight: Tensor | float = 1.0) -> None:
        """``weight`` 0 leaves the value out of the average (a device tensor keeps that decision off the host)."""
        mode = "train" if self.model.training else "eval"
        value = value.detach() if isinstance(value, Tensor) else float(value)
        self._sigreg_metrics[mode][name].append((value, weight))

    def _record_sigreg_metrics(
        self,
        model: nn.Module,
        task: Tensor,
        reg: Tensor,
        alpha: float,
        layer_losses: dict[str, Tensor],
        counted: bool | Tensor,
    ) -> None:
        """``counted`` False (or a device False): the micro-batch was too small for the statistic; ``reg`` is
        left out of ``sigreg_loss`` and the batch is counted in ``sigreg_skipped_batches``."""
        names = ["task_loss", "sigreg_loss"]
        values = [task.reshape(()), reg.detach().float().reshape(()).to(task.device)]
        if self.args.sigreg_log_per_layer:
            for name, value in layer_losses.items():
                names.append(f"sigreg_loss/{name}")
                values.append(value.detach().float().reshape(()).to(task.device))
        packed = torch.stack(values).unsqueeze(0)  # [1, M]: one all-gather for every metric
        gathered = self.accelerator.gather(packed).reshape(-1, len(names)).mean(dim=0)  # on device: no sync
        weight = counted.to(task.device, torch.float32) if isinstance(counted, Tensor) else float(counted)
        self._add_metric("task_loss", gathered[0])
        for index, name in enumerate(names[1:], start=1):
            self._add_metric(name, gathered[index], weight)
        self._add_metric("sigreg_alpha", alpha)
        if isinstance(counted, Tensor) or not counted:
            self._add_metric("sigreg_skipped_batches", 1.0 - weight)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Merge the averaged SIGReg metrics into ``logs`` (prefixed in evaluation), then clear them."""
        mode = "eval" if self._sigreg_eval_prefix is not None else "train"
        reduced = {
            name: _reduce_metric(entries, total=name == "sigreg_skipped_batches",  # a count, not a mean
                                 nan_inf_filter=self.args.logging_nan_inf_filter)
            for name, entries in self._sigreg_metrics[mode].items()
        }  # fmt: skip
        averaged = {name: value for name, value in reduced.items() if value is not None}
        if self.regulariser is not None and averaged.get("sigreg_skipped_batches"):
            _ = self.regulariser.num_skipped_batches  # reads a device-side count: its one-time warning comes now
        if mode == "eval":
            averaged = {f"{self._sigreg_eval_prefix}_{name}": value for name, value in averaged.items()}
        self._sigreg_metrics[mode].clear()
        logs.update(averaged)  # in place: evaluate() returns this very dict
        super().log(logs, *args, **kwargs)

    # -- hook lifetime and batch-size warnings ------------------------------------------------------------
    @contextlib.contextmanager
    def _hooks_attached(self, evaluation: bool = False) -> Iterator[None]:
        """Keep the regulariser's hooks registered for the duration (removed afterwards, even on error)."""
        regulariser = self.regulariser
        off_in_eval = evaluation and not (isinstance(self.args, SIGRegArguments) and self.args.sigreg_in_eval)
        if regulariser is None or regulariser.is_attached or off_in_eval:
            yield
            return
        regulariser.attach()
        try:
            yield
        finally:
            regulariser.detach()

    def _warn_strong_batch_dependence(self, evaluation: bool) -> None:
        if self.sigreg_mode != "strong" or self.args.sigreg_strong_normalization != "seed":
            return
        if not evaluation and self.args.gradient_accumulation_steps > 1:
            self._warn_once(
                "ga",
                f"strong SIGReg (sigreg_strong_normalization='seed') is N times an integral, N the samples of one "
                f"micro-batch over all processes; with gradient_accumulation_steps="
                f"{self.args.gradient_accumulation_steps} N is the micro-batch, not the accumulated batch, so the "
                "regulariser's strength differs from a run with the same batch without accumulation. Set "
                "sigreg_strong_normalization='per_sample' for a strength independent of N.",
            )
        if evaluation and self.args.per_device_eval_batch_size != self.args.per_device_train_batch_size:
            self._warn_once(
                "eval",
                f"strong SIGReg (sigreg_strong_normalization='seed') grows with N: eval_sigreg_loss at "
                f"per_device_eval_batch_size={self.args.per_device_eval_batch_size} is not comparable with the "
                f"training value at per_device_train_batch_size={self.args.per_device_train_batch_size}.",
            )

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._warn_strong_batch_dependence(evaluation=False)
        if self.regulariser is not None:
            logger.info("SIGReg taps: %s", self.regulariser.describe())
        self._sigreg_in_train = True
        try:
            with self._hooks_attached():
                return super().train(*args, **kwargs)
        finally:
            self._sigreg_in_train = False
            if self.regulariser is not None:
                self.regulariser.detach()

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self._hooks_attached(evaluation=True):
            try:
                return super().predict(*args, **kwargs)
            finally:
                self._sigreg_metrics["eval"].clear()

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        if isinstance(self.args, SIGRegArguments) and self.args.sigreg_in_eval:
            self._warn_strong_batch_dependence(evaluation=True)
        self._sigreg_metrics["eval"].clear()
        self._sigreg_eval_prefix = metric_key_prefix
        try:
            with self._hooks_attached(evaluation=True):
                return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._sigreg_eval_prefix = None
            self._sigreg_metrics["eval"].clear()


class SIGRegTrainer(SIGRegMixin, Trainer):
    """``transformers.Trainer`` with SIGReg: :class:`SIGRegMixin` on ``Trainer``, ``args`` a ``SIGRegConfig``."""
