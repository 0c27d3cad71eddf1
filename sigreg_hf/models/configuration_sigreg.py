"""Configurations of the paper's four CIFAR models (ResNet18-CIFAR, RoPE ViT, "Peak" ViT, MLP).

Every architectural size is a field, so the same classes describe the paper's CIFAR-100 models (the
defaults) and small variants for tests or other datasets (e.g. the MLP on 8x8 grey digits with
``image_size=8, in_chans=1``). The number of classes is the standard ``num_labels`` (default 100).

This file imports only ``transformers`` so that it can be copied next to a checkpoint by
``save_pretrained`` and loaded with ``trust_remote_code=True`` where ``sigreg_hf`` is not installed.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

__all__ = [
    "SigregMLPConfig",
    "SigregResNetCifarConfig",
    "SigregViTPeakConfig",
    "SigregViTRopeConfig",
]

_DEFAULT_NUM_LABELS = 100  # CIFAR-100, the paper's dataset

ROPE_VARIANTS = ("reference", "axial")
INIT_SCHEMES = ("reference", "trunc_normal")


def _set_default_num_labels(kwargs: dict[str, Any]) -> None:
    """Default to 100 classes unless the caller (or a saved config) fixed the label set."""
    if kwargs.get("id2label") is None and kwargs.get("num_labels") is None:
        kwargs["num_labels"] = _DEFAULT_NUM_LABELS


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def _check_patch_grid(image_size: int, patch_size: int) -> None:
    if image_size % patch_size != 0:
        raise ValueError(
            f"image_size={image_size} is not divisible by patch_size={patch_size}; choose a patch size "
            "that tiles the image exactly (the paper uses 32 / 4 = an 8x8 grid)."
        )


def _check_heads(hidden_size: int, num_attention_heads: int) -> None:
    if hidden_size % num_attention_heads != 0:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}.")


def _set_vit_geometry(
    config: PretrainedConfig,
    image_size: int,
    patch_size: int,
    in_chans: int,
    hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
) -> None:
    """Validate and set the input geometry and transformer sizes both ViT configs share."""
    config.image_size = _positive_int("image_size", image_size)
    config.patch_size = _positive_int("patch_size", patch_size)
    config.in_chans = _positive_int("in_chans", in_chans)
    config.hidden_size = _positive_int("hidden_size", hidden_size)
    config.num_hidden_layers = _positive_int("num_hidden_layers", num_hidden_layers)
    config.num_attention_heads = _positive_int("num_attention_heads", num_attention_heads)
    _check_patch_grid(image_size, patch_size)
    _check_heads(hidden_size, num_attention_heads)


class SigregResNetCifarConfig(PretrainedConfig):
    """ResNet18, CIFAR variant: 3x3 stride-1 stem, no max-pool, BasicBlock stages, GAP, linear head.

    Args:
        in_chans: input image channels.
        image_size: nominal input side length (informational: the network is fully convolutional with a
            global average pool, any size >= 8 works).
        stem_width: channels of the 3x3 stem convolution.
        widths: channels of each stage.
        depths: BasicBlocks per stage (the first block of stages 2+ has stride 2).
        num_labels: number of classes (default 100).
    """

    model_type = "sigreg-resnet18-cifar"

    def __init__(
        self,
        in_chans: int = 3,
        image_size: int = 32,
        stem_width: int = 64,
        widths: list[int] | tuple[int, ...] = (64, 128, 256, 512),
        depths: list[int] | tuple[int, ...] = (2, 2, 2, 2),
        **kwargs: Any,
    ) -> None:
        _set_default_num_labels(kwargs)
        self.in_chans = _positive_int("in_chans", in_chans)
        self.image_size = _positive_int("image_size", image_size)
        self.stem_width = _positive_int("stem_width", stem_width)
        self.widths = [_positive_int("widths[i]", w) for w in widths]
        self.depths = [_positive_int("depths[i]", d) for d in depths]
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError(
                f"widths {self.widths} and depths {self.depths} must be non-empty lists of the same length "
                "(one entry per stage)."
            )
        super().__init__(**kwargs)


class SigregViTRopeConfig(PretrainedConfig):
    """The paper's first-round ViT: 2-D RoPE on q/k in every layer, no CLS token, mean-pooled head.

    Args:
        image_size, patch_size, in_chans: input geometry (32 / 4 gives an 8x8 token grid).
        hidden_size, num_hidden_layers, num_attention_heads, mlp_ratio: transformer sizes.
        qkv_bias: bias on the fused qkv projection (the paper: none).
        rope_variant: ``"reference"`` (default): the reference notebooks' 2-D RoPE, column angles on the
            first half of each head's channels and row angles on the second, channel i paired with
            i + head_dim/2 by rotate-half. ``"axial"``: timm's axial RoPE (interleaved pairs, an exact
            rotation); the project's choice before the reference was read, at ``rope_temperature=100``.
            A saved config without this field (written before it existed) loads as ``"axial"``.
        rope_temperature: base of the RoPE inverse frequencies (the reference: 10000).
        layer_norm_eps: epsilon of the LayerNorms (PyTorch default).
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 (the paper: 0).
        initializer_range: std of the truncated-normal init of Linear weights (the paper: 0.02).
        fused_attention: use ``scaled_dot_product_attention`` (same maths as the explicit softmax form).
    """

    model_type = "sigreg-vit-rope"

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        hidden_size: int = 256,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = False,
        rope_variant: str | None = None,
        rope_temperature: float = 10000.0,
        layer_norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        fused_attention: bool = True,
        **kwargs: Any,
    ) -> None:
        _set_default_num_labels(kwargs)
        _set_vit_geometry(
            self, image_size, patch_size, in_chans, hidden_size, num_hidden_layers, num_attention_heads
        )
        if (hidden_size // num_attention_heads) % 4 != 0:
            raise ValueError(
                f"2-D RoPE needs a head dimension divisible by 4 (two axes x sin/cos pairs); got "
                f"hidden_size / num_attention_heads = {hidden_size // num_attention_heads}."
            )
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        if rope_variant is None:
            # only timm's axial RoPE existed when configs without this field were saved
            rope_variant = "axial" if kwargs.get("transformers_version") is not None else "reference"
        self.rope_variant = _choice("rope_variant", rope_variant, ROPE_VARIANTS)
        self.rope_temperature = float(rope_temperature)
        self.layer_norm_eps = float(layer_norm_eps)
        self.drop_path_rate = float(drop_path_rate)
        self.initializer_range = float(initializer_range)
        self.fused_attention = bool(fused_attention)
        super().__init__(**kwargs)


class SigregViTPeakConfig(PretrainedConfig):
    """The paper's "Peak" ViT: CLS token + learned absolute position embedding, drop path to 0.1.

    Args:
        image_size, patch_size, in_chans: input geometry (32 / 4 gives 64 patches + 1 CLS token).
        hidden_size, num_hidden_layers, num_attention_heads, mlp_ratio: transformer sizes.
        qkv_bias: bias on the qkv projection (the paper: yes).
        drop_path_rate: stochastic depth of the last block; block i gets ``rate * i / (depth - 1)``.
        layer_norm_eps: epsilon of the LayerNorms (PyTorch default).
        initializer_range: std of the truncated-normal init of the CLS token and position embedding
            (0.02), and of the block Linear weights under ``init_scheme="trunc_normal"``.
        init_scheme: ``"reference"`` (default, as the reference): only the CLS token and position
            embedding (trunc-normal) and the head weight (xavier-uniform) are set; every other layer keeps
            PyTorch's default init, biases included. ``"trunc_normal"``: block Linear weights
            trunc-normal(``initializer_range``) and all Linear biases zero (the project's earlier init,
            about half the reference's initial weight scale).
        fused_attention: ``False`` (the paper) computes softmax(QK^T / sqrt(d)) V explicitly.
    """

    model_type = "sigreg-vit-peak"

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        hidden_size: int = 192,
        num_hidden_layers: int = 9,
        num_attention_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        init_scheme: str = "reference",
        fused_attention: bool = False,
        **kwargs: Any,
    ) -> None:
        _set_default_num_labels(kwargs)
        _set_vit_geometry(
            self, image_size, patch_size, in_chans, hidden_size, num_hidden_layers, num_attention_heads
        )
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_norm_eps = float(layer_norm_eps)
        self.initializer_range = float(initializer_range)
        self.init_scheme = _choice("init_scheme", init_scheme, INIT_SCHEMES)
        self.fused_attention = bool(fused_attention)
        super().__init__(**kwargs)


class SigregMLPConfig(PretrainedConfig):
    """The paper's MLP: flatten -> ``num_hidden_layers`` x [Linear(hidden_size), ReLU] -> Linear(num_labels).

    Args:
        image_size, in_chans: input geometry; the input dimension is ``in_chans * image_size**2``
            (3072 for CIFAR).
        hidden_size: width of every hidden layer (1024).
        num_hidden_layers: number of hidden Linear+ReLU layers (5; 6 Linear layers in all).
    """

    model_type = "sigreg-mlp"

    def __init__(
        self,
        image_size: int = 32,
        in_chans: int = 3,
        hidden_size: int = 1024,
        num_hidden_layers: int = 5,
        **kwargs: Any,
    ) -> None:
        _set_default_num_labels(kwargs)
        self.image_size = _positive_int("image_size", image_size)
        self.in_chans = _positive_int("in_chans", in_chans)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_hidden_layers = _positive_int("num_hidden_layers", num_hidden_layers)
        super().__init__(**kwargs)
