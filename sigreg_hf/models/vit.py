"""The paper's two CIFAR Vision Transformers as transformers models, built from timm blocks.

* ``SigregViTRopeForImageClassification`` (first round): 4x4 patches, 2-D rotary position
  embedding applied to q and k in every layer (timm ``EvaBlock`` / ``EvaAttention``), no CLS token,
  no absolute position embedding, final LayerNorm, mean over tokens, linear head; Linear weights
  trunc-normal(0.02). ``config.rope_variant="reference"`` (default) is the reference notebooks' RoPE
  (:func:`reference_rope_2d_embedding`: base 10000, channel i paired with i + d/2, rotate-half);
  ``"axial"`` is timm's axial RoPE (:func:`rope_2d_embedding`) at ``config.rope_temperature``.
* ``SigregViTPeakForImageClassification`` ("Peak"): 4x4 patches, CLS token + learned absolute
  position embedding, timm ``Block`` (pre-norm, qkv bias) with stochastic depth rising linearly
  from 0 to ``drop_path_rate``, attention computed explicitly as softmax(QK^T / sqrt(d)) V,
  final LayerNorm, head on the CLS token (xavier-uniform). ``config.init_scheme="reference"``
  (default) keeps PyTorch's default init everywhere else, as the reference did.

The patch-embedding convolution keeps PyTorch's default init in both (the reference names none).
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch
from timm.layers import PatchEmbed, build_rotary_pos_embed
from timm.models.eva import EvaAttention, EvaBlock
from timm.models.vision_transformer import Block
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_sigreg import SigregViTPeakConfig, SigregViTRopeConfig
from .modeling_common import SigregPreTrainedModel, check_pixel_values, init, torch_default_init_

__all__ = [
    "SigregViTPeakForImageClassification",
    "SigregViTRopeForImageClassification",
    "drop_path_rates",
    "reference_rope_2d_embedding",
    "rope_2d_embedding",
]


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each block, rising linearly from 0 (first) to ``drop_path_rate`` (last)."""
    if depth == 1:
        return [0.0]
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


def rope_2d_embedding(
    grid_size: tuple[int, int], head_dim: int, temperature: float, device: torch.device | None = None
) -> torch.Tensor:
    """Concatenated ``[sin, cos]`` table ``[H*W, 2*head_dim]`` of 2-D axial RoPE on an index grid.

    Half of each head's channel pairs rotate with the row index, half with the column index, at
    frequencies ``temperature ** (-i / (head_dim / 4))``; consumed by timm's ``apply_rot_embed_cat``.
    """
    sin, cos = build_rotary_pos_embed(
        feat_shape=list(grid_size),
        dim=head_dim,
        temperature=temperature,
        in_pixels=False,
        device=device,
        dtype=torch.float32,
    )
    return torch.cat([sin, cos], dim=-1)


def reference_rope_2d_embedding(
    grid_size: tuple[int, int], head_dim: int, base: float = 10000.0, device: torch.device | None = None
) -> torch.Tensor:
    """Concatenated ``[sin, cos]`` table ``[H*W, 2*head_dim]`` of the reference notebooks' 2-D RoPE.

    Tokens in row-major order (row ``r``, column ``c``); ``d_x = head_dim // 2``, ``d_y = head_dim - d_x``,
    ``f_x[j] = base ** (-2j / d_x)`` for ``j < d_x / 2`` (likewise ``f_y``); each token's angles are
    ``[c*f_x, c*f_x, r*f_y, r*f_y]``. Applied with rotate-half (timm's ``apply_rot_embed_cat(..., half=True)``):
    channel ``i`` pairs with ``i + head_dim/2``, and the two members of a pair turn by different angles,
    so it is not an exact rotation (as in the reference).
    """
    if head_dim % 4 != 0:
        raise ValueError(f"the reference 2-D RoPE needs a head dimension divisible by 4, got {head_dim}.")
    height, width = grid_size
    d_x = head_dim // 2
    d_y = head_dim - d_x

    def inv_freq(dim: int) -> torch.Tensor:
        return base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)

    rows = torch.arange(height, dtype=torch.float32, device=device).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float32, device=device).repeat(height)
    col_angles = cols[:, None] * inv_freq(d_x)[None, :]
    row_angles = rows[:, None] * inv_freq(d_y)[None, :]
    angles = torch.cat([col_angles, col_angles, row_angles, row_angles], dim=-1)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _layer_norm(eps: float):
    return partial(nn.LayerNorm, eps=eps)


class _SigregViTBase(SigregPreTrainedModel):
    sigreg_tap_patterns: ClassVar[list[str]] = [r"blocks\.\d+"]
    sigreg_tap_pooling: ClassVar[str] = "mean"

    def _build_patch_embed(self, config: SigregViTRopeConfig | SigregViTPeakConfig) -> None:
        self.patch_embed = PatchEmbed(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            embed_dim=config.hidden_size,
        )

    def _build_trunk(self, config: SigregViTRopeConfig | SigregViTPeakConfig, block: Any) -> None:
        """``blocks`` (``block(drop_path=rate)`` per layer, timm's attention kernel per ``fused_attention``), the
        final norm and the head; then the weights' initialisation."""
        rates = drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.blocks = nn.ModuleList(block(drop_path=rate) for rate in rates)
        for each in self.blocks:
            each.attn.fused_attn = config.fused_attention
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_vit_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            torch_default_init_(module)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, EvaAttention) and module.q_bias is not None:
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
            init.zeros_(module.k_bias)


class SigregViTRopeForImageClassification(_SigregViTBase):
    """First-round ViT (2-D RoPE, mean-pooled head) image classifier.

    SIGReg taps: the residual stream after every transformer block (``blocks.{i}``, ``[B, N, D]``),
    reduced by the mean over tokens.
    """

    config_class = SigregViTRopeConfig
    _no_split_modules: ClassVar[list[str]] = ["EvaBlock"]

    def __init__(self, config: SigregViTRopeConfig) -> None:
        super().__init__(config)
        self._build_patch_embed(config)
        self._build_trunk(
            config,
            partial(
                EvaBlock,
                dim=config.hidden_size,
                num_heads=config.num_attention_heads,
                qkv_bias=config.qkv_bias,
                mlp_ratio=config.mlp_ratio,
                num_prefix_tokens=0,
                rotate_half=config.rope_variant == "reference",
                act_layer=nn.GELU,
                norm_layer=_layer_norm(config.layer_norm_eps),
            ),
        )

    def _init_weights(self, module: nn.Module) -> None:
        self._init_vit_module(module)

    def rope_embedding(self, device: torch.device | None = None) -> torch.Tensor:
        """The ``[num_patches, 2 * head_dim]`` sin/cos table every block applies to q and k."""
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        if self.config.rope_variant == "reference":
            return reference_rope_2d_embedding(
                tuple(self.patch_embed.grid_size), head_dim, self.config.rope_temperature, device=device
            )
        return rope_2d_embedding(
            tuple(self.patch_embed.grid_size), head_dim, self.config.rope_temperature, device=device
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        """Classify ``pixel_values [B, C, H, W]`` (H = W = ``config.image_size``).

        Args:
            labels: optional int64 ``[B]`` class indices; gives ``loss`` (cross-entropy). Float (soft)
                labels raise a ValueError.
            output_hidden_states: also return the patch embeddings followed by every block's output
                (the SIGReg tap points), each ``[B, N, D]``.
            kwargs: ``num_items_in_batch`` (gradient accumulation) is honoured; others are ignored.
        """
        check_pixel_values(pixel_values, self.config.in_chans, self.config.image_size, type(self).__name__)
        want_hidden = self._want_hidden_states(output_hidden_states)
        rope = self.rope_embedding(device=pixel_values.device)
        x = self.patch_embed(pixel_values)
        hidden_states: list[torch.Tensor] = [x]
        for block in self.blocks:
            x = block(x, rope=rope)
            hidden_states.append(x)
        logits = self.head(self.norm(x).mean(dim=1))
        return self._classifier_output(
            logits, labels, tuple(hidden_states) if want_hidden else None, return_dict, kwargs
        )


class SigregViTPeakForImageClassification(_SigregViTBase):
    """The "Peak" ViT (CLS token, absolute position embedding, drop path) image classifier.

    SIGReg taps: the residual stream after every transformer block (``blocks.{i}``, ``[B, 1 + N, D]``),
    reduced by the mean over all tokens, CLS included.
    """

    config_class = SigregViTPeakConfig
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, config: SigregViTPeakConfig) -> None:
        super().__init__(config)
        self._build_patch_embed(config)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + 1, config.hidden_size))
        self._build_trunk(
            config,
            partial(
                Block,
                dim=config.hidden_size,
                num_heads=config.num_attention_heads,
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                act_layer=nn.GELU,
                norm_layer=_layer_norm(config.layer_norm_eps),
            ),
        )

    def _init_weights(self, module: nn.Module) -> None:
        reference = self.config.init_scheme == "reference"
        if module is self.head:
            init.xavier_uniform_(module.weight)
            if reference:
                fan_in = module.weight.shape[1]
                init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
            else:
                init.zeros_(module.bias)
        elif module is self:
            init.trunc_normal_(self.cls_token, std=self.config.initializer_range)
            init.trunc_normal_(self.pos_embed, std=self.config.initializer_range)
        elif reference and isinstance(module, nn.Linear):
            torch_default_init_(module)
        else:
            self._init_vit_module(module)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        """Classify ``pixel_values [B, C, H, W]`` (H = W = ``config.image_size``).

        Args:
            labels: optional int64 ``[B]`` class indices; gives ``loss`` (cross-entropy). Float (soft)
                labels raise a ValueError.
            output_hidden_states: also return the embeddings (CLS + patches + position) followed by every
                block's output (the SIGReg tap points), each ``[B, 1 + N, D]``.
            kwargs: ``num_items_in_batch`` (gradient accumulation) is honoured; others are ignored.
        """
        check_pixel_values(pixel_values, self.config.in_chans, self.config.image_size, type(self).__name__)
        want_hidden = self._want_hidden_states(output_hidden_states)
        x = self.patch_embed(pixel_values)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        hidden_states: list[torch.Tensor] = [x]
        for block in self.blocks:
            x = block(x)
            hidden_states.append(x)
        logits = self.head(self.norm(x)[:, 0])
        return self._classifier_output(
            logits, labels, tuple(hidden_states) if want_hidden else None, return_dict, kwargs
        )
