"""Architecture presets for ``sigreg_layers="auto"``: which modules to tap, and how to pool them.

Architecture knowledge only: every function here takes the *unwrapped* model and its ``{name: module}``
map (see :func:`sigreg_hf.taps.named_modules_clean`) and returns a :class:`TapPreset` or None.
:func:`sigreg_hf.taps.auto_taps` is the public entry point.

Hierarchical backbones (ConvNeXt, Swin, RegNet, MobileNet, EfficientNet, PoolFormer) are tapped at the
output of each *stage* (one per resolution level), global-average pooled: the same taps at every model
size (ConvNeXt-tiny and -base both give four), whatever the number of blocks per stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

__all__ = ["TapPreset", "feature_layout", "find_preset", "preset_pooling"]


@dataclass(frozen=True)
class TapPreset:
    """What ``"auto"`` resolves to for one model.

    Attributes:
        patterns: regexes (``re.fullmatch`` on module names) of the tapped modules.
        pooling: how each captured hidden state becomes ``[N, C]`` (see ``pool_hidden_state``).
        source: which rule chose them (e.g. ``"transformers:convnext"``, ``"timm:stages"``), for logs.
    """

    patterns: list[str]
    pooling: str
    source: str


# transformers architectures by ``config.model_type``: (patterns, pooling).
# Names checked with transformers 5.x (ViT blocks are ``vit.layers.N`` there, ``vit.encoder.layer.N`` in 4.x).
_TRANSFORMERS_FIXED: dict[str, tuple[list[str], str]] = {
    # each residual block (BasicLayer / BottleNeckLayer), NCHW -> global average pool
    "resnet": ([r"(?:resnet\.)?encoder\.stages\.\d+\.layers\.\d+"], "mean"),
    # residual stream after each transformer block, mean over tokens (CLS included)
    "vit": ([r"(?:vit\.)?(?:layers|encoder\.layer)\.\d+"], "mean"),
    "bert": ([r"(?:bert\.)?encoder\.(?:layer|layers)\.\d+"], "mean"),
    # causal LM: every token is a sample of the residual stream -> [B*L, D]
    "gpt2": ([r"(?:transformer\.)?h\.\d+"], "flatten"),
    # hierarchical: each stage (its downsampling comes first, so its output is the stage's features)
    "convnext": ([r"(?:convnext\.)?encoder\.stages\.\d+"], "mean"),
    "convnextv2": ([r"(?:convnextv2\.)?encoder\.stages\.\d+"], "mean"),
    "regnet": ([r"(?:regnet\.)?encoder\.stages\.\d+"], "mean"),
}

# hierarchical transformers architectures whose stage modules are not called as a whole (a ModuleList) or end
# with a downsampling: the last block of each stage. Values: regex of the per-stage block containers.
_TRANSFORMERS_LAST_BLOCK: dict[str, str] = {
    "swin": r"(?:swin\.)?encoder\.layers\.\d+\.blocks",  # stage = blocks, then PatchMerging (downsample)
    "swinv2": r"(?:swinv2\.)?encoder\.layers\.\d+\.blocks",  # the same layout as Swin
    "poolformer": r"(?:poolformer\.)?encoder\.block\.\d+",  # a ModuleList per stage, never called itself
}

# hierarchical transformers architectures with one flat list of blocks: the last block before each downsampling.
_TRANSFORMERS_FLAT: dict[str, str] = {
    "mobilenet_v1": r"(?:mobilenet_v1\.)?layer",
    "mobilenet_v2": r"(?:mobilenet_v2\.)?layer",
    "efficientnet": r"(?:efficientnet\.)?encoder\.blocks",
}

# timm classes tapped at each stage, located with the model's own ``feature_info``.
_TIMM_HIERARCHICAL = (
    "ConvNeXt",
    "SwinTransformer",
    "SwinTransformerV2",
    "RegNet",
    "MobileNetV3",
    "EfficientNet",
    "MetaFormer",  # PoolFormer (v1/v2), ConvFormer, CAFormer
)
# feature_info entries that are stages (not the stem: ``stem``, ``bn1``, ``act1``)
_TIMM_STAGE_NAME = re.compile(r"(?:stages|layers|blocks)\.\d+|s\d+")


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _is_timm_model(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.")


def _escaped(names: list[str]) -> list[str]:
    return [re.escape(name) for name in names]


def _children_names(modules: dict[str, nn.Module], container: str) -> list[str]:
    return [f"{container}.{child}" for child, _ in modules[container].named_children()]


def _last_block_per_stage(modules: dict[str, nn.Module], container_pattern: str) -> list[str]:
    """The last child of every module whose name fully matches ``container_pattern``, in model order."""
    compiled = re.compile(container_pattern)
    found = []
    for name in modules:
        if compiled.fullmatch(name):
            children = _children_names(modules, name)
            if children:
                found.append(children[-1])
    return found


def _downsamples(module: nn.Module) -> bool:
    """Whether a block reduces the spatial resolution (a convolution or pooling with stride > 1)."""
    for sub in module.modules():
        stride = getattr(sub, "stride", None)
        if isinstance(sub, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and stride is not None:
            strides = stride if isinstance(stride, tuple) else (stride,)
            if any(s > 1 for s in strides):
                return True
    return False


def _stage_ends(modules: dict[str, nn.Module], container_pattern: str) -> list[str]:
    """For a flat list of blocks: the block before each downsampling block, and the last block."""
    compiled = re.compile(container_pattern)
    containers = [name for name in modules if compiled.fullmatch(name)]
    if len(containers) != 1:
        return []
    blocks = _children_names(modules, containers[0])
    ends = [blocks[i - 1] for i in range(1, len(blocks)) if _downsamples(modules[blocks[i]])]
    return ends + blocks[-1:]


def _transformers_preset(model: nn.Module, modules: dict[str, nn.Module]) -> TapPreset | None:
    model_type = _model_type(model)
    if model_type in _TRANSFORMERS_FIXED:
        patterns, pooling = _TRANSFORMERS_FIXED[model_type]
        return TapPreset(list(patterns), pooling, f"transformers:{model_type}")
    if model_type in _TRANSFORMERS_LAST_BLOCK:
        names = _last_block_per_stage(modules, _TRANSFORMERS_LAST_BLOCK[model_type])
    elif model_type in _TRANSFORMERS_FLAT:
        names = _stage_ends(modules, _TRANSFORMERS_FLAT[model_type])
    else:
        return None
    return TapPreset(_escaped(names), "mean", f"transformers:{model_type}") if names else None


def _timm_stage_names(model: nn.Module) -> list[str]:
    feature_info = getattr(model, "feature_info", None)
    names = []
    for info in feature_info if isinstance(feature_info, list) else []:
        name = info.get("module") if isinstance(info, dict) else None
        if isinstance(name, str) and _TIMM_STAGE_NAME.fullmatch(name):
            names.append(name)
    return names


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


def _timm_preset(model: nn.Module, prefix: str) -> TapPreset | None:
    """A timm model (``prefix``: its name inside a wrapper, e.g. ``timm_model``)."""
    if type(model).__name__ in _TIMM_HIERARCHICAL:
        stages = _timm_stage_names(model)
        if stages:
            full = [f"{prefix}.{name}" if prefix else name for name in stages]
            return TapPreset(_escaped(full), "mean", "timm:stages")
    patterns = _timm_block_patterns(model, prefix)
    return TapPreset(patterns, "auto", "timm:blocks") if patterns else None


def _mlp_hidden_linears(modules: dict[str, nn.Module]) -> list[str] | None:
    """Every Linear except the last one, if all parameterised leaves are Linear layers (a plain MLP)."""
    leaves = {name: m for name, m in modules.items() if not list(m.children())}
    with_params = {name: m for name, m in leaves.items() if any(True for _ in m.parameters(recurse=False))}
    if len(with_params) < 2 or not all(isinstance(m, nn.Linear) for m in with_params.values()):
        return None
    return _escaped(list(with_params)[:-1])


def _largest_block_list(modules: dict[str, nn.Module]) -> list[str] | None:
    """Generic fallback: the ModuleList/Sequential with the most same-class, non-leaf children."""
    best: tuple[int, str] | None = None
    for name, module in modules.items():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        children = list(module.children())
        if len({type(c) for c in children}) != 1 or not list(children[0].children()):
            continue
        if best is None or len(children) > best[0]:
            best = (len(children), name)
    return None if best is None else [re.escape(best[1]) + r"\.\d+"]


def feature_layout(model: nn.Module, modules: dict[str, nn.Module]) -> str:
    """``"NHWC"`` when ``model`` (or the timm model it wraps) keeps 4-D features channels-last (timm's Swin:
    ``output_fmt="NHWC"``), else ``"NCHW"``: how a 4-D hidden state is pooled."""
    candidates = [model] + [m for name, m in modules.items() if name.count(".") == 0 and _is_timm_model(m)]
    return "NHWC" if any(getattr(m, "output_fmt", None) == "NHWC" for m in candidates) else "NCHW"


def _is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal-LM head class (``*ForCausalLM`` / ``*LMHeadModel``): every token is a sample."""
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def preset_pooling(model: nn.Module) -> str | None:
    """The pooling of ``model``'s class attribute or architecture preset, whichever layers are tapped; else None."""
    pooling = getattr(type(model), "sigreg_tap_pooling", None)
    if pooling:
        return str(pooling)
    model_type = _model_type(model)
    if model_type in _TRANSFORMERS_FIXED:
        return _TRANSFORMERS_FIXED[model_type][1]
    if model_type in _TRANSFORMERS_LAST_BLOCK or model_type in _TRANSFORMERS_FLAT:
        return "mean"
    return "flatten" if _is_causal_lm(model) else None


def find_preset(model: nn.Module, modules: dict[str, nn.Module]) -> TapPreset | None:
    """The paper-style taps of the unwrapped ``model`` (``modules``: its ``{clean name: module}``), or None.

    In order: the class's ``sigreg_tap_patterns`` / ``sigreg_tap_pooling``; a transformers preset
    (ResNet: each residual block; ViT / BERT: each transformer block; GPT-2: each block, tokens flattened;
    ConvNext/V2, RegNet, Swin, PoolFormer, MobileNet V1/V2, EfficientNet: each stage's output, mean-pooled);
    a timm model, also inside a wrapper such as ``TimmWrapperForImageClassification`` (ConvNeXt, Swin,
    RegNet, MobileNetV3, EfficientNet, MetaFormer/PoolFormer: each stage of its ``feature_info``; others:
    each block); a plain MLP (each hidden Linear, i.e. pre-activations); the longest list of identical
    blocks (e.g. Llama/Qwen decoder layers), tokens flattened for a causal LM and mean-pooled otherwise.
    """
    patterns = getattr(type(model), "sigreg_tap_patterns", None)
    if patterns:
        return TapPreset(list(patterns), str(getattr(type(model), "sigreg_tap_pooling", "auto")), "class attribute")
    found = _transformers_preset(model, modules)
    if found:
        return found
    if _is_timm_model(model):
        found = _timm_preset(model, "")
        if found:
            return found
    for name, module in modules.items():
        if name.count(".") == 0 and _is_timm_model(module):  # e.g. TimmWrapper's ``timm_model``
            found = _timm_preset(module, name)
            if found:
                return found
    linears = _mlp_hidden_linears(modules)
    if linears:
        return TapPreset(linears, "none", "mlp:hidden linears")
    blocks = _largest_block_list(modules)
    if blocks:
        return TapPreset(blocks, preset_pooling(model) or "auto", "largest block list")
    return None
