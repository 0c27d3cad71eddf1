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
  looked through); ``"auto"`` resolves to per-architecture presets (:func:`auto_taps`);
* pooling of a hidden state to ``[N, C]`` (:func:`pool_hidden_state`);
* the sketch randomness: :func:`step_generator` seeds a CPU ``torch.Generator`` from
  ``(run seed, global step, layer index)``, so every rank draws the same matrices and a resumed run
  draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sigreg_hf.config import normalise_layers as _normalise_layers
from sigreg_hf.losses import draw_sketch, sigreg_strong, sigreg_weak

__all__ = [
    "SIGRegulariser",
    "auto_taps",
    "first_tensor",
    "pool_hidden_state",
    "resolve_taps",
    "sketch_seed",
    "step_generator",
    "unwrap_model",
]

Pooling = Literal["auto", "mean", "cls", "flatten", "none"]
POOLINGS = ("auto", "mean", "cls", "flatten", "none")
MODES = ("none", "weak", "strong")

# Name components inserted by wrappers; removed so that patterns see the user's model's own names.
_WRAPPER_COMPONENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")

# Paper-style taps for transformers architectures, keyed by ``config.model_type``: (patterns, pooling).
# Names checked with transformers 5.x (ViT blocks are ``vit.layers.N`` there, ``vit.encoder.layer.N`` in 4.x).
_TRANSFORMERS_PRESETS: dict[str, tuple[list[str], str]] = {
    # each residual block (BasicLayer / BottleNeckLayer), NCHW -> global average pool
    "resnet": ([r"(?:resnet\.)?encoder\.stages\.\d+\.layers\.\d+"], "mean"),
    # residual stream after each transformer block, mean over tokens (CLS included)
    "vit": ([r"(?:vit\.)?(?:layers|encoder\.layer)\.\d+"], "mean"),
    "bert": ([r"(?:bert\.)?encoder\.(?:layer|layers)\.\d+"], "mean"),
    # causal LM: every token is a sample of the residual stream -> [B*L, D]
    "gpt2": ([r"(?:transformer\.)?h\.\d+"], "flatten"),
}

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


def _is_timm_model(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.")


def _timm_block_patterns(model: nn.Module, prefix: str) -> list[str] | None:
    """Each block of a timm model: ``blocks.N`` (ViT-like), ``stages.N.blocks.M`` or ``layerK.N`` (ResNet)."""
    p = re.escape(prefix + ".") if prefix else ""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
        return [p + r"blocks\.\d+"]
    stages = getattr(model, "stages", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages) > 0:
        if all(isinstance(getattr(stage, "blocks", None), (nn.Sequential, nn.ModuleList)) for stage in stages):
            return [p + r"stages\.\d+\.blocks\.\d+"]
        return [p + r"stages\.\d+"]
    if all(isinstance(getattr(model, f"layer{i}", None), nn.Sequential) for i in range(1, 5)):
        return [p + r"layer[1-4]\.\d+"]
    return None


def _mlp_hidden_linears(model: nn.Module) -> list[str] | None:
    """Every Linear except the last one, if all parameterised leaves are Linear layers (a plain MLP)."""
    modules = named_modules_clean(model)
    leaves = {name: m for name, m in modules.items() if not list(m.children())}
    with_params = {name: m for name, m in leaves.items() if any(True for _ in m.parameters(recurse=False))}
    if len(with_params) < 2 or not all(isinstance(m, nn.Linear) for m in with_params.values()):
        return None
    linears = list(with_params)
    return [re.escape(name) for name in linears[:-1]]


def _largest_block_list(model: nn.Module) -> list[str] | None:
    """Generic fallback: the ModuleList/Sequential with the most same-class, non-leaf children."""
    best: tuple[int, str] | None = None
    for name, module in named_modules_clean(model).items():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        children = list(module.children())
        if len({type(c) for c in children}) != 1 or not list(children[0].children()):
            continue
        if best is None or len(children) > best[0]:
            best = (len(children), name)
    return None if best is None else [re.escape(best[1]) + r"\.\d+"]


def _is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal-LM head class (``*ForCausalLM`` / ``*LMHeadModel``): every token is a sample."""
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def default_pooling(model: nn.Module) -> str:
    """The pooling ``"auto"`` means for ``model`` whichever layers are tapped: the class's
    ``sigreg_tap_pooling``, the architecture preset's, ``"flatten"`` for a causal LM, else ``"auto"`` (per shape).
    """
    base = unwrap_model(model)
    pooling = getattr(type(base), "sigreg_tap_pooling", None)
    if pooling:
        return str(pooling)
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type in _TRANSFORMERS_PRESETS:
        return _TRANSFORMERS_PRESETS[model_type][1]
    return "flatten" if _is_causal_lm(base) else "auto"


def auto_taps(model: nn.Module) -> tuple[list[str], str]:
    """The paper-style taps of ``model``: ``(patterns, pooling)``.

    In order: the model class's ``sigreg_tap_patterns`` / ``sigreg_tap_pooling`` attributes; presets
    for transformers ResNet (each residual block), ViT / BERT (each transformer block), GPT-2 (each
    block, tokens flattened); a timm model (also inside ``TimmWrapperForImageClassification``: each of
    its blocks); a plain MLP (each hidden Linear, i.e. pre-activations); otherwise the longest list
    of identical blocks (e.g. Llama/Qwen/Mistral decoder layers), with tokens flattened for a causal LM
    (``[B*L, D]``, so a few long sequences still give many samples) and mean-pooled otherwise.

    Raises:
        ValueError: no preset applies; the message lists the module names to choose from.
    """
    base = unwrap_model(model)
    patterns = getattr(type(base), "sigreg_tap_patterns", None)
    if patterns:
        return list(patterns), str(getattr(type(base), "sigreg_tap_pooling", "auto"))
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type in _TRANSFORMERS_PRESETS:
        found, pooling = _TRANSFORMERS_PRESETS[model_type]
        return list(found), pooling
    if _is_timm_model(base):
        found = _timm_block_patterns(base, "")
        if found:
            return found, "auto"
    for name, module in named_modules_clean(base).items():
        if name.count(".") == 0 and _is_timm_model(module):  # e.g. TimmWrapper's ``timm_model``
            found = _timm_block_patterns(module, name)
            if found:
                return found, "auto"
    found = _mlp_hidden_linears(base)
    if found:
        return found, "none"
    found = _largest_block_list(base)
    if found:
        return found, default_pooling(base)
    raise ValueError(
        f"sigreg_layers='auto' has no preset for {type(base).__name__}: pass module-name regexes "
        "(sigreg_layers=[...]) or set the class attribute sigreg_tap_patterns. Available module names:\n  "
        + _available_listing(list(named_modules_clean(base)))
    )


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
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
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


def _pool_real_tokens(x: Tensor, token_mask: Tensor, pooling: str, check_empty_rows: bool) -> Tensor:
    if token_mask.shape != x.shape[:2]:
        raise ValueError(
            f"token_mask has shape {tuple(token_mask.shape)} but the token states are {tuple(x.shape)} "
            f"([B, L, D] needs a [B, L] = {tuple(x.shape[:2])} mask). A layer whose sequence length differs "
            "from the inputs' needs its own mask: set sigreg_mask_padding=False or override select_hidden_states."
        )
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
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
        if sketch_type not in ("gaussian", "orthonormal"):
            raise ValueError(f"sketch_type must be 'gaussian' or 'orthonormal'; got {sketch_type!r}.")
        if strong_normalization not in ("seed", "per_sample"):
            raise ValueError(f"strong_normalization must be 'seed' or 'per_sample'; got {strong_normalization!r}.")
        if not isinstance(mask_padding, bool):
            raise ValueError(f"mask_padding must be True or False; got {mask_padding!r}.")
        for name, value, minimum in (("sketch_dim", sketch_dim, 1), ("num_points", num_points, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")

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
        self._captured.clear()
        modules = named_modules_clean(self.model)
        for name in self.layer_names:
            self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        """Remove the hooks and drop the captured tensors (and their graphs)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captured.clear()

    @property
    def is_attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> SIGRegulariser:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.enabled:
                return
            tensor = first_tensor(output)
            if tensor is not None:
                self._captured[name] = tensor

        return hook

    @property
    def captured(self) -> dict[str, Tensor]:
        """The raw outputs captured by the hooks during the last forward, by module name."""
        return dict(self._captured)

    def clear(self) -> None:
        """Forget captured tensors (e.g. between two forwards inside one ``with`` block)."""
        self._captured.clear()

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
        selected = self.select_hidden_states(dict(self._captured), outputs)
        if not selected:
            raise RuntimeError(
                "SIGRegulariser captured no hidden states: run the model's forward inside "
                "`with regulariser:` (or after attach()), and check that the tapped modules "
                f"{self.layer_names} are used by forward."
            )
        mask = attention_mask if self.mask_padding else None
        if mask is not None and (not isinstance(mask, Tensor) or mask.dim() != 2):
            raise ValueError(
                f"attention_mask must be a [B, L] tensor to mask padding; got "
                f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}. "
                "Pass the tokenizer's 2-D mask, or set mask_padding=False (sigreg_mask_padding=False)."
            )
        return {
            name: pool_hidden_state(
                tensor,
                self.pooling,
                token_mask=mask if tensor.dim() == 3 else None,
                check_empty_rows=self.check_finite,  # both checks sync with the host; the trainer skips them
            )
            for name, tensor in selected.items()
        }

    def layer_loss(self, x: Tensor, *, step: int, layer_index: int) -> Tensor:
        """The chosen statistic of one ``[N, C]`` hidden state, with the (seed, step, layer) generator."""
        generator = step_generator(self.seed, step, layer_index)
        common = {"generator": generator, "distributed": self.distributed, "check_finite": self.check_finite}
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

        Per-layer values (with their graphs) are left in :attr:`layer_losses`.
        """
        if self.mode == "none":
            raise ValueError("SIGRegulariser(mode='none') only captures; use mode='weak' or 'strong' for loss().")
        if step is None:
            step = self._calls
        self._calls += 1
        pooled = self.pooled(outputs, attention_mask=attention_mask)
        losses = {
            name: self.layer_loss(x, step=step, layer_index=index) for index, (name, x) in enumerate(pooled.items())
        }
        self.layer_losses = losses
        values = list(losses.values())
        device = values[0].device
        return torch.stack([v.to(device) for v in values]).mean()

    def __repr__(self) -> str:
        return (
            f"SIGRegulariser(mode={self.mode!r}, pooling={self.pooling!r}, mask_padding={self.mask_padding}, "
            f"sketch_dim={self.sketch_dim}, layers={self.layer_names})"
        )
