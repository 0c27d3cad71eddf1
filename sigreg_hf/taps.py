"""SIGRegulariser: capture hidden states with forward hooks and turn them into a SIGReg loss.

Usable with or without ``Trainer``::

    reg = SIGRegulariser(model, mode="weak", layers="auto")
    for step, batch in enumerate(loader):
        with reg:                                    # hooks live only inside the block
            out = model(**batch)
            loss = (1 - 0.1) * out.loss + 0.1 * reg.loss(step=step)
        loss.backward()

Pieces (each public and small):

* module selection: patterns are Python regexes matched with ``re.fullmatch`` against the names of
  ``named_modules()`` of the *unwrapped* model (DDP/DataParallel ``.module``, FSDP1
  ``_fsdp_wrapped_module``, activation-checkpoint wrappers and ``torch.compile``'s ``_orig_mod`` are
  looked through); ``"auto"`` resolves to per-architecture presets (:func:`auto_taps`, the table
  lives in :mod:`sigreg_hf.presets`);
* pooling of a hidden state to ``[N, C]`` (:func:`pool_hidden_state`);
* the sketch randomness: :func:`step_generator` seeds a CPU ``torch.Generator`` from
  ``(run seed, global step, layer index)``, so every rank draws the same matrices and a resumed run
  draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sigreg_hf.config import SIGREG_POOLINGS, validate_sigreg_options
from sigreg_hf.config import normalise_layers as _normalise_layers
from sigreg_hf.losses import (
    _use_distributed,
    draw_sketch,
    global_sample_counts,
    global_sample_counts_on_device,
    sigreg_strong,
    sigreg_weak,
)
from sigreg_hf.presets import TapPreset, feature_layout, find_preset, preset_pooling

logger = logging.getLogger(__name__)

__all__ = [
    "SIGRegulariser",
    "TapPreset",
    "auto_taps",
    "first_tensor",
    "pool_hidden_state",
    "resolve_taps",
    "sketch_seed",
    "step_generator",
    "tap_preset",
    "unwrap_model",
]

Pooling = Literal["auto", "mean", "cls", "flatten", "none"]

# Name components inserted by wrappers; removed so that patterns see the user's model's own names.
_WRAPPER_COMPONENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")

_MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------------------------
# randomness
# ----------------------------------------------------------------------------------------------
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sketch_seed(seed: int, step: int, layer_index: int) -> int:
    """A 63-bit seed mixed from ``(seed, step, layer_index)`` (SplitMix64; distinct inputs decorrelate)."""
    h = _splitmix64(int(seed) & _MASK64)
    h = _splitmix64(h ^ (int(step) & _MASK64))
    h = _splitmix64(h ^ (int(layer_index) & _MASK64))
    return h & ((1 << 63) - 1)


def step_generator(seed: int, step: int, layer_index: int) -> torch.Generator:
    """A CPU generator seeded from ``(run seed, global step, layer index)``.

    Identical on every rank (all ranks share the seed and the global step) and after a resume.
    Matrices drawn from it are moved to the data's device by the losses.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(sketch_seed(seed, step, layer_index))
    return generator


# ----------------------------------------------------------------------------------------------
# model plumbing
# ----------------------------------------------------------------------------------------------
def unwrap_model(model: nn.Module) -> nn.Module:
    """Look through DDP / DataParallel / FSDP1 / DeepSpeed / ``torch.compile`` / PEFT wrappers to the user's model.

    A PEFT model (LoRA etc.) unwraps to its base model, whose module names are the ones the user knows
    (``model.layers.0``, not ``base_model.model.model.layers.0``); the adapters live inside its modules.
    """
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        if type(model).__module__.startswith("peft.") and callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
            continue
        cls_name = type(model).__name__
        if cls_name in ("FullyShardedDataParallel", "DeepSpeedEngine") and isinstance(
            getattr(model, "module", None), nn.Module
        ):
            model = model.module
            continue
    return model


def clean_module_name(name: str) -> str:
    """Drop wrapper components (``_fsdp_wrapped_module``, ``_orig_mod``, ...) from a module name."""
    if not any(component in name for component in _WRAPPER_COMPONENTS):
        return name
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_COMPONENTS)


def named_modules_clean(model: nn.Module) -> dict[str, nn.Module]:
    """``{clean name: module}`` for the unwrapped model, in registration order (root excluded)."""
    modules: dict[str, nn.Module] = {}
    for name, module in unwrap_model(model).named_modules():
        clean = clean_module_name(name)
        if clean and clean not in modules:
            modules[clean] = module
    return modules


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"sigreg layer pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    return compiled


def _available_listing(names: list[str], limit: int = 60) -> str:
    shown = names[:limit]
    more = f"\n  ... and {len(names) - limit} more" if len(names) > limit else ""
    return "\n  ".join(shown) + more


def resolve_taps(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the modules of ``model`` that fully match any of ``patterns``, in model order.

    Raises:
        ValueError: a pattern matches no module; the message lists the module names available.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    modules = named_modules_clean(model)
    names = list(modules)
    compiled = _compile(list(patterns))
    unmatched = [p.pattern for p in compiled if not any(p.fullmatch(name) for name in names)]
    if unmatched:
        raise ValueError(
            f"sigreg layer pattern(s) {', '.join(unmatched)} match no module of {type(unwrap_model(model)).__name__} "
            "(patterns are regexes matched with re.fullmatch against model.named_modules() names). "
            f"Available module names:\n  {_available_listing(names)}"
        )
    return [name for name in names if any(p.fullmatch(name) for p in compiled)]


def tap_preset(model: nn.Module) -> TapPreset:
    """The :class:`~sigreg_hf.presets.TapPreset` ``"auto"`` resolves to for ``model`` (wrappers looked through).

    Raises:
        ValueError: no preset applies; the message lists the module names to choose from.
    """
    base = unwrap_model(model)
    modules = named_modules_clean(base)
    found = find_preset(base, modules)
    if found is None:
        raise ValueError(
            f"sigreg_layers='auto' has no preset for {type(base).__name__}: pass module-name regexes "
            "(sigreg_layers=[...]) or set the class attribute sigreg_tap_patterns. Available module names:\n  "
            + _available_listing(list(modules))
        )
    return found


def default_pooling(model: nn.Module) -> str:
    """The pooling ``"auto"`` means for ``model`` whichever layers are tapped: the class's
    ``sigreg_tap_pooling``, the architecture preset's, ``"flatten"`` for a causal LM, else ``"auto"`` (per shape).
    """
    return preset_pooling(unwrap_model(model)) or "auto"


def auto_taps(model: nn.Module) -> tuple[list[str], str]:
    """The paper-style taps of ``model``: ``(patterns, pooling)`` (see :func:`sigreg_hf.presets.find_preset`).

    Hierarchical backbones (transformers ConvNext/V2, Swin, RegNet, MobileNet V1/V2, EfficientNet,
    PoolFormer; timm ConvNeXt, Swin, RegNet, MobileNetV3, EfficientNet, PoolFormer) get each stage's
    output, mean-pooled; ResNet each residual block; ViT/BERT/GPT-2 and other stacks each block; a plain
    MLP each hidden Linear (pre-activations).

    Raises:
        ValueError: no preset applies; the message lists the module names to choose from.
    """
    found = tap_preset(model)
    return list(found.patterns), found.pooling


# ----------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------
def first_tensor(output: Any) -> Tensor | None:
    """A module output's hidden state: the tensor itself, or the first tensor of a tuple/ModelOutput."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        return None
    for value in values:
        found = first_tensor(value) if not isinstance(value, Tensor) else value
        if found is not None:
            return found
    return None


def pool_hidden_state(
    x: Tensor, pooling: str = "auto", *, token_mask: Tensor | None = None, check_empty_rows: bool = True
) -> Tensor:
    """Reduce a hidden state to ``[N, C]``.

    * ``[B, C, H, W]`` feature maps: average over H, W (``"auto"``/``"mean"``); ``"flatten"`` makes
      every position a sample, ``[B*H*W, C]``;
    * ``[B, L, D]`` tokens: mean over tokens (``"auto"``/``"mean"``), the first token (``"cls"``) or
      every token a sample (``"flatten"``, ``[B*L, D]``);
    * ``[B, D]``: as is (any pooling);
    * ``"none"``: the tensor must already be ``[N, C]``.

    ``token_mask`` (``[B, L]``, nonzero = real token, e.g. a tokenizer's ``attention_mask``) keeps padding
    out of token states: ``"mean"`` averages the real tokens of each row and ``"flatten"`` keeps only
    real tokens (``[num_real_tokens, D]``); ``"cls"`` takes the first token regardless. It is ignored for
    ``[B, D]`` and feature-map inputs. A row without any real token raises for ``"mean"`` unless
    ``check_empty_rows=False`` (no host sync; such a row then pools to zeros).
    """
    if pooling not in SIGREG_POOLINGS:
        raise ValueError(f"pooling must be one of {SIGREG_POOLINGS}; got {pooling!r}.")
    if x.dim() == 2:
        return x
    if pooling == "none":
        raise ValueError(
            f"pooling='none' needs [N, C] hidden states; got shape {tuple(x.shape)}. "
            "Use 'auto', 'mean', 'cls' or 'flatten'."
        )
    if x.dim() == 3:
        if pooling == "cls":
            return x[:, 0]
        if token_mask is not None:
            return _pool_real_tokens(x, token_mask, pooling, check_empty_rows)
        if pooling in ("auto", "mean"):
            return x.mean(dim=1)
        return x.reshape(-1, x.shape[-1])
    if x.dim() >= 4:
        if pooling == "cls":
            raise ValueError(f"pooling='cls' applies to token states [B, L, D]; got a feature map {tuple(x.shape)}.")
        if pooling in ("auto", "mean"):
            return x.flatten(2).mean(dim=2)
        return x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])
    raise ValueError(f"cannot pool a hidden state of shape {tuple(x.shape)} to [N, C].")


def _check_token_mask(x: Tensor, token_mask: Tensor) -> None:
    if token_mask.shape != x.shape[:2]:
        raise ValueError(
            f"token_mask has shape {tuple(token_mask.shape)} but the token states are {tuple(x.shape)} "
            f"([B, L, D] needs a [B, L] = {tuple(x.shape[:2])} mask). A layer whose sequence length differs "
            "from the inputs' needs its own mask: set sigreg_mask_padding=False or override select_hidden_states."
        )


def _pool_real_tokens(x: Tensor, token_mask: Tensor, pooling: str, check_empty_rows: bool) -> Tensor:
    _check_token_mask(x, token_mask)
    real = token_mask.to(device=x.device) != 0
    if pooling == "flatten":
        return x[real]
    counts = real.sum(dim=1)
    if check_empty_rows and bool((counts == 0).any()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"token_mask rows {rows} have no real token: every row needs at least one nonzero entry.")
    weights = real.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / counts.clamp(min=1).unsqueeze(-1).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# the regulariser
# ----------------------------------------------------------------------------------------------
class SIGRegulariser:
    """Forward hooks on named modules + the SIGReg loss of what they captured.

    Args:
        model: the model (possibly wrapped by DDP/FSDP/``torch.compile``; hooks go on the unwrapped
            modules, which also fire under the wrappers).
        mode: ``"weak"``, ``"strong"`` or ``"none"`` (capture only; :meth:`loss` then raises).
        layers: ``"auto"`` or a list of regexes (``re.fullmatch`` on ``named_modules()`` names).
        pooling: ``"auto"`` (per shape, or the preset's choice), ``"mean"``, ``"cls"``, ``"flatten"``
            or ``"none"``.
        mask_padding: pool token states ``[B, L, D]`` over real tokens only when :meth:`loss` gets an
            ``attention_mask`` (see :func:`pool_hidden_state`).
        sketch_dim: weak sketch dimension k and number of strong slices.
        sketch_type: ``"gaussian"`` (the seed's matrices) or ``"orthonormal"`` (weak: orthonormal sketch rows,
            unbiased; strong: mutually orthogonal slice directions, needs ``sketch_dim <= C``).
        num_points, t_max: the strong statistic's quadrature.
        strong_normalization: ``"seed"`` (N times the integral) or ``"per_sample"`` (the integral alone); see
            :func:`sigreg_hf.losses.sigreg_strong`.
        seed: run seed of the sketch generator (with the step and the layer index).
        distributed: passed to the losses (``"auto"``: global-batch statistic under torch.distributed).
        check_finite: raise on NaN/Inf hidden states.

    :meth:`from_args` builds one from a :class:`sigreg_hf.config.SIGRegArguments` (and its ``seed``).
    Hooks are registered on ``__enter__`` (or :meth:`attach`) and removed on ``__exit__``
    (or :meth:`detach`), even when the block raises.

    What is regularised is what each tapped module returned: a later in-place op (``ReLU(inplace=True)``)
    does not change it (the output is copied where something writes into it, see :meth:`_as_returned`).
    A module called several times in one forward is regularised on every call, as ``name``, ``name[1]``,
    ...: with shared weights (ALBERT-style depth, several views through one encoder) each call is a hidden
    state of its own, and keeping only one would silently drop the others; to regularise one call only,
    tap a module that runs once (or override :meth:`select_hidden_states`). Under torch.distributed every
    rank must capture the same states (the same modules, called as often).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: str = "weak",
        layers: str | list[str] = "auto",
        pooling: str = "auto",
        mask_padding: bool = True,
        sketch_dim: int = 64,
        sketch_type: str = "gaussian",
        num_points: int = 17,
        t_max: float = 5.0,
        strong_normalization: str = "seed",
        seed: int = 0,
        distributed: bool | Literal["auto"] = "auto",
        check_finite: bool = True,
    ) -> None:
        validate_sigreg_options(
            mode=mode, pooling=pooling, sketch_dim=sketch_dim, num_points=num_points, sketch_type=sketch_type,
            t_max=t_max, strong_normalization=strong_normalization, mask_padding=mask_padding, prefix="",
        )  # fmt: skip

        self.model = model
        self.mode: str = mode
        self.mask_padding: bool = mask_padding
        self.sketch_dim: int = sketch_dim
        self.sketch_type: str = sketch_type
        self.num_points: int = num_points
        self.t_max: float = float(t_max)
        self.strong_normalization: str = strong_normalization
        self.seed: int = int(seed)
        self.distributed = distributed
        self.check_finite = check_finite

        patterns = _normalise_layers(layers)
        if patterns == ["auto"]:
            patterns, preset_pooling = auto_taps(model)
        else:
            preset_pooling = default_pooling(model)
        self.patterns: list[str] = list(patterns)
        self.pooling: str = pooling if pooling != "auto" else preset_pooling
        self.layer_names: list[str] = resolve_taps(model, self.patterns)
        self._check_mask_applies(model)

        self._handles: list[Any] = []
        self._captured: dict[str, Tensor] = {}
        self._calls = 0
        self.layer_losses: dict[str, Tensor] = {}
        self._enabled = True
        #: Record only forwards run with gradients enabled (a trainer sets it while training, so that a
        #: second no-grad forward of the same batch, e.g. TRL's for metrics, does not replace the states).
        self.grad_only = False
        self._num_skipped_host = 0
        self._skipped_device: Tensor | None = None  # skipped batches counted on the device (see loss())
        #: Whether the last :meth:`loss` had enough samples to count: a bool, or a 0-dim bool tensor on the
        #: device where the decision is taken there (see :meth:`loss`; read it only when logging).
        self.last_batch_counted: bool | Tensor = True
        self._warned_small_batch = False
        self._call_counts: dict[str, int] = {}
        # in-place safety: (captured key, training) -> whether a later op wrote into the output in place
        self._writes_in_place: dict[tuple[str, bool], bool] = {}
        self._returned: dict[str, tuple[Tensor, int, tuple[str, bool]]] = {}  # key -> (output, its version, state)
        self._feature_layout: str | None = None

    @classmethod
    def from_args(cls, model: nn.Module, args: Any, **overrides: Any) -> SIGRegulariser:
        """The regulariser that ``args`` (a :class:`sigreg_hf.config.SIGRegArguments`) describes for ``model``.

        ``overrides`` are keyword arguments of ``__init__`` (e.g. ``distributed=False``, ``check_finite=False``).
        """
        options: dict[str, Any] = dict(
            mode=args.sigreg_mode,
            layers=args.sigreg_layers,
            pooling=args.sigreg_pooling,
            mask_padding=args.sigreg_mask_padding,
            sketch_dim=args.sigreg_sketch_dim,
            sketch_type=args.sigreg_sketch_type,
            num_points=args.sigreg_num_points,
            t_max=args.sigreg_t_max,
            strong_normalization=args.sigreg_strong_normalization,
            seed=getattr(args, "seed", 0),
        )
        options.update(overrides)
        return cls(model, **options)

    @property
    def enabled(self) -> bool:
        """Whether attached hooks record now (False e.g. during activation-checkpoint recomputation)."""
        return self._enabled and (not self.grad_only or torch.is_grad_enabled())

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)

    def _check_mask_applies(self, model: nn.Module) -> None:
        """An encoder-decoder's ``attention_mask`` is the encoder's: refuse to mask decoder states with it."""
        config = getattr(unwrap_model(model), "config", None)
        if not self.mask_padding or not getattr(config, "is_encoder_decoder", False):
            return
        decoder_taps = [name for name in self.layer_names if "decoder" in name.split(".")]
        if decoder_taps:
            raise ValueError(
                f"Tapped decoder modules {decoder_taps} of an encoder-decoder model: the batch's attention_mask "
                "describes the encoder's tokens, not the decoder's. Tap encoder modules, or set "
                "sigreg_mask_padding=False (mask_padding=False) to pool decoder states over every position."
            )

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self) -> SIGRegulariser:
        """Register the forward hooks (idempotent), enable recording and clear anything captured before."""
        if self._handles:
            return self
        self.enabled = True
        self.clear()
        modules = named_modules_clean(self.model)
        # a forward of the whole model starts a new capture (a second forward replaces the first's states)
        self._handles.append(unwrap_model(self.model).register_forward_pre_hook(self._start_forward))
        for name in self.layer_names:
            self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        """Remove the hooks and drop the captured tensors (and their graphs)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    @property
    def is_attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> SIGRegulariser:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _start_forward(self, module: nn.Module, args: Any) -> None:
        if self.enabled:
            self.clear()

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.enabled:
                return
            tensor = first_tensor(output)
            if tensor is None:
                return
            # A module run several times in one forward (shared weights, several views) is regularised on
            # every call: its second call is captured as "name[1]", and so on.
            calls = self._call_counts.get(name, 0)
            self._call_counts[name] = calls + 1
            key = name if calls == 0 else f"{name}[{calls}]"
            self._captured[key] = self._as_returned(key, tensor, module.training)

        return hook

    def _as_returned(self, key: str, tensor: Tensor, training: bool) -> Tensor:
        """``tensor`` as the module returned it, safe from later in-place ops (``ReLU(inplace=True)``).

        A copy is taken the first time a module's output is seen in each train/eval mode, and the
        output's version counter is checked in :meth:`loss`; modules whose output nothing writes into
        afterwards are captured without a copy from then on (checked again at every step).
        """
        if torch.compiler.is_compiling() or tensor.is_inference():
            return tensor.clone()  # no version counter to check while tracing or for inference tensors
        state = (key, training)
        self._returned[key] = (tensor, tensor._version, state)
        return tensor if self._writes_in_place.get(state) is False else tensor.clone()

    def _check_in_place(self) -> None:
        """Compare the version counters of the captured outputs with those seen when they were returned."""
        for key, (output, version, state) in self._returned.items():
            written = output._version != version
            if self._captured.get(key) is output and written:  # captured without a copy
                raise RuntimeError(
                    f"The output of tapped module {key!r} was modified in place after it was returned (e.g. by "
                    "ReLU(inplace=True)), which earlier forwards in this mode did not do: SIGReg cannot see the "
                    "value it returned. Make the later op out-of-place (inplace=False) or tap another module."
                )
            self._writes_in_place[state] = written
        self._returned.clear()

    @property
    def captured(self) -> dict[str, Tensor]:
        """The outputs captured by the hooks in the current forward, by module name (``name[k]``: its call k + 1).

        Emptied by :meth:`loss`, :meth:`clear` and the start of the model's next forward.
        """
        return dict(self._captured)

    def clear(self) -> None:
        """Forget captured tensors (done at the start of each forward of the model while attached)."""
        self._captured.clear()
        self._call_counts.clear()
        self._returned.clear()

    @property
    def feature_layout(self) -> str:
        """How 4-D hidden states are laid out: ``"NCHW"``, or ``"NHWC"`` in a channels-last timm model (Swin)."""
        if self._feature_layout is None:
            base = unwrap_model(self.model)
            self._feature_layout = feature_layout(base, named_modules_clean(base))
        return self._feature_layout

    def describe(self) -> dict[str, Any]:
        """What is regularised, for logs and run records (JSON-serialisable).

        Keys: ``mode``, ``layers`` (the tapped module names), ``patterns``, ``taps_source`` (the ``"auto"``
        preset that chose them, e.g. ``"transformers:convnext"``, or ``"sigreg_layers"`` for user patterns),
        ``pooling``, ``feature_layout``, ``mask_padding``, ``sketch_dim``, ``sketch_type``, ``seed`` and, for
        mode ``"strong"``, ``num_points`` and ``t_max``.
        """
        try:
            preset = tap_preset(self.model)
        except ValueError:
            preset = None
        source = preset.source if preset is not None and list(preset.patterns) == self.patterns else "sigreg_layers"
        info: dict[str, Any] = {
            "mode": self.mode,
            "layers": list(self.layer_names),
            "patterns": list(self.patterns),
            "taps_source": source,
            "pooling": self.pooling,
            "feature_layout": self.feature_layout,
            "mask_padding": self.mask_padding,
            "sketch_dim": self.sketch_dim,
            "sketch_type": self.sketch_type,
            "seed": self.seed,
        }
        if self.mode == "strong":
            info.update(num_points=self.num_points, t_max=self.t_max)
        return info

    # -- loss -----------------------------------------------------------------------------------
    def select_hidden_states(self, captured: dict[str, Tensor], outputs: Any = None) -> dict[str, Tensor]:
        """Choose the tensors to regularise: ``{name: tensor}``; override to use others.

        The default returns ``captured`` (the hooked modules' outputs, in model order). A subclass may
        return any tensors instead, e.g. from the model's outputs::

            class LastHidden(SIGRegulariser):
                def select_hidden_states(self, captured, outputs=None):
                    return {"last": outputs.hidden_states[-1]}

        Each returned tensor is pooled with :func:`pool_hidden_state` (``self.pooling``); the dict
        order fixes each layer's index in the sketch seed.
        """
        return captured

    def pooled(self, outputs: Any = None, *, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        """The selected hidden states reduced to ``[N, C]``, by name.

        With ``attention_mask`` (``[B, L]``) and :attr:`mask_padding`, token states ``[B, L, D]`` are
        pooled over their real tokens only; other shapes do not use it.
        """
        return {name: rows for name, (rows, _) in self._pool(outputs, attention_mask, keep_padding=False).items()}

    def _pool(
        self, outputs: Any, attention_mask: Tensor | None, *, keep_padding: bool
    ) -> dict[str, tuple[Tensor, Tensor | None]]:
        """``{name: (rows [N, C], sample mask [N] or None)}``. With ``keep_padding``, token states flattened over a
        padding mask keep every position, and the mask says which rows are samples (the losses' ``sample_mask``):
        the same statistic as selecting the real tokens, without a data-dependent shape (no host sync)."""
        self._check_in_place()
        selected = self.select_hidden_states(dict(self._captured), outputs)
        if not selected:
            raise RuntimeError(
                "SIGRegulariser captured no hidden states: run the model's forward inside "
                "`with regulariser:` (or after attach()), call loss() once per forward (it uses the states "
                f"up), and check that the tapped modules {self.layer_names} are used by forward."
            )
        mask = attention_mask if self.mask_padding else None
        if mask is not None and (not isinstance(mask, Tensor) or mask.dim() != 2):
            raise ValueError(
                f"attention_mask must be a [B, L] tensor to mask padding; got "
                f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}. "
                "Pass the tokenizer's 2-D mask, or set mask_padding=False (sigreg_mask_padding=False)."
            )
        channels_last = self.feature_layout == "NHWC"
        pooled: dict[str, tuple[Tensor, Tensor | None]] = {}
        for name, tensor in selected.items():
            token_mask = mask if tensor.dim() == 3 else None
            if keep_padding and token_mask is not None and self.pooling == "flatten":
                _check_token_mask(tensor, token_mask)
                pooled[name] = (tensor.reshape(-1, tensor.shape[-1]), token_mask.reshape(-1))
                continue
            rows = pool_hidden_state(
                tensor.permute(0, 3, 1, 2) if channels_last and tensor.dim() == 4 else tensor,
                self.pooling,
                token_mask=token_mask,
                check_empty_rows=self.check_finite,  # both checks sync with the host; the trainer skips them
            )
            pooled[name] = (rows, None)
        return pooled

    def layer_loss(self, x: Tensor, *, step: int, layer_index: int, sample_mask: Tensor | None = None) -> Tensor:
        """The chosen statistic of one ``[N, C]`` hidden state, with the (seed, step, layer) generator
        (``sample_mask``: the rows that are samples, see :func:`sigreg_hf.losses.sigreg_weak`)."""
        generator = step_generator(self.seed, step, layer_index)
        common = {"generator": generator, "distributed": self.distributed, "check_finite": self.check_finite,
                  "sample_mask": sample_mask}  # fmt: skip
        if self.mode == "strong":
            projection = None
            if self.sketch_type == "orthonormal":
                # orthonormal rows of a [K, C] sketch = K mutually orthogonal unit directions
                projection = draw_sketch(
                    self.sketch_dim, x.shape[-1], sketch_type="orthonormal", generator=generator, device=x.device
                ).T
            return sigreg_strong(
                x, num_slices=self.sketch_dim, num_points=self.num_points, t_max=self.t_max,
                projection=projection, normalization=self.strong_normalization, **common,
            )
        return sigreg_weak(x, sketch_dim=self.sketch_dim, sketch_type=self.sketch_type, **common)

    def loss(
        self, outputs: Any = None, *, step: int | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Mean over the selected layers of the statistic (float32 0-dim tensor).

        Args:
            outputs: the model's outputs, handed to :meth:`select_hidden_states`.
            step: the global (optimiser) step seeding the sketches; when None, the number of previous
                ``loss()`` calls is used. Under DDP pass the global step so all ranks agree.
            attention_mask: the batch's ``[B, L]`` padding mask; token states are pooled over real
                tokens only (unless ``mask_padding=False``).

        Per-layer values (with their graphs) are left in :attr:`layer_losses`; a module called several
        times in one forward counts once per call (``name``, ``name[1]``, ...).

        A micro-batch too small for the statistic (fewer than 2 samples in a pooled state; under
        torch.distributed, in the global batch of all ranks, so that every rank decides alike) contributes
        no regulariser: the result is a zero connected to the graph, :attr:`num_skipped_batches` counts it,
        and the first such batch logs a warning. With ``check_finite=False`` (the trainer's setting), under
        torch.distributed or with a padding mask, the decision is taken on the device (no host read; under
        torch.distributed one small all-reduce of the counts): the statistic is computed (finite) and replaced
        by that zero, :attr:`last_batch_counted` is a device bool (:attr:`layer_losses` then hold the unused
        values), and the count and warning come when :attr:`num_skipped_batches` is read.

        With ``check_finite=False`` and a padding mask, token states flattened to samples keep every position
        and the mask goes to the losses (``sample_mask``): the statistic of the real tokens without selecting
        them (a data-dependent shape would make the host wait for the device).

        The captured states are used once: ``loss()`` forgets them (as does the start of the model's next
        forward), so a loop of forward + ``loss()`` never mixes two forwards' states, even when the model's
        ``forward`` is entered without its hooks (e.g. through a PEFT wrapper).
        """
        if self.mode == "none":
            raise ValueError("SIGRegulariser(mode='none') only captures; use mode='weak' or 'strong' for loss().")
        if step is None:
            step = self._calls
        self._calls += 1
        try:
            pooled_masked = self._pool(outputs, attention_mask, keep_padding=not self.check_finite)
        finally:
            self.clear()
        pooled = {name: rows for name, (rows, _) in pooled_masked.items()}
        masks = {name: mask for name, (_, mask) in pooled_masked.items()}
        first = next(iter(pooled.values()))
        local = [x.shape[0] if masks[name] is None else (masks[name] != 0).sum() for name, x in pooled.items()]
        on_device = not self.check_finite and (
            _use_distributed(self.distributed) or any(m is not None for m in masks.values())
        )
        if on_device:
            # the skip decision stays on the device: no host read per step under DDP or with padding masks (the
            # trainer's setting)
            counts = global_sample_counts_on_device(local, device=first.device, distributed=self.distributed)
            counted = (counts >= 2).all()
            skipped = (~counted).to(torch.int64)
            self._skipped_device = skipped if self._skipped_device is None else self._skipped_device + skipped
        else:
            host_counts = global_sample_counts(local, device=first.device, distributed=self.distributed)
            if min(host_counts) < 2:
                self.last_batch_counted = False
                return self._skip(pooled, host_counts)
            counted = True
        self.last_batch_counted = counted
        losses = {
            name: self.layer_loss(x, step=step, layer_index=index, sample_mask=masks[name])
            for index, (name, x) in enumerate(pooled.items())
        }
        self.layer_losses = losses
        values = list(losses.values())
        device = values[0].device
        mean = torch.stack([v.to(device) for v in values]).mean()
        if on_device:  # a zero in the graph where the global batch was too small (the statistics stay finite)
            mean = torch.where(counted.to(device), mean, torch.zeros_like(mean))
        return mean

    @property
    def num_skipped_batches(self) -> int:
        """Micro-batches too small for the statistic (global N < 2): they contributed no regulariser.

        Where :meth:`loss` decides on the device (``check_finite=False`` under torch.distributed or with a padding
        mask) the count is kept there and read here, so reading it synchronises with the device; the one-time
        warning then comes from this read (the trainer reads it when it logs).
        """
        if self._skipped_device is not None:
            pending = int(self._skipped_device)
            self._skipped_device = None
            if pending:
                self._num_skipped_host += pending
                self._warn_small_batch(
                    f"{pending} micro-batch(es) with fewer than 2 samples in a tapped state, over all ranks"
                )
        return self._num_skipped_host

    def _warn_small_batch(self, what: str) -> None:
        if self._warned_small_batch:
            return
        self._warned_small_batch = True
        logger.warning(
            "SIGReg skipped a micro-batch too small for the statistic (%s; it needs N >= 2): it contributes "
            "no regulariser. Such batches are counted in num_skipped_batches; this warning is shown once.",
            what,
        )

    def _skip(self, pooled: dict[str, Tensor], counts: list[int]) -> Tensor:
        """A zero that keeps the pooled states in the graph (their gradients are zeros), counted and warned once."""
        self._num_skipped_host += 1
        self.layer_losses = {}
        small = {name: n for name, n in zip(pooled, counts, strict=True) if n < 2}
        self._warn_small_batch(f"samples per tapped state, over all ranks: {small}")
        first = next(iter(pooled.values()))
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        zeros = [x[:0].sum().to(device=first.device, dtype=dtype) for x in pooled.values()]
        return torch.stack(zeros).sum()

    def __repr__(self) -> str:
        return (
            f"SIGRegulariser(mode={self.mode!r}, pooling={self.pooling!r}, mask_padding={self.mask_padding}, "
            f"sketch_dim={self.sketch_dim}, layers={self.layer_names})"
        )
