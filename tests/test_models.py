"""Tests of sigreg_hf.models: the paper's four CIFAR models as Hugging Face models."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from timm.layers import DropPath, apply_rot_embed_cat
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

import sigreg_hf.models as M
from sigreg_hf.models import create_config, create_model, list_models
from sigreg_hf.models.vit import drop_path_rates, reference_rope_2d_embedding, rope_2d_embedding

# Small configurations of each family, fast on CPU.
SMALL = {
    "resnet18_cifar": dict(num_classes=7, stem_width=8, widths=[8, 16, 16, 32], depths=[2, 2, 2, 2]),
    "vit_rope": dict(num_classes=7, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2.0),
    "vit_peak": dict(num_classes=7, hidden_size=24, num_hidden_layers=3, num_attention_heads=3, mlp_ratio=4.0),
    "mlp": dict(num_classes=7, hidden_size=32, num_hidden_layers=5),
}
# Number of tapped modules and tensor shape per tap for a batch of B=2 at 32x32 with the SMALL configs.
SMALL_TAP_SHAPES = {
    "resnet18_cifar": [(2, 8, 32, 32)] * 2 + [(2, 16, 16, 16)] * 2 + [(2, 16, 8, 8)] * 2 + [(2, 32, 4, 4)] * 2,
    "vit_rope": [(2, 64, 32)] * 3,
    "vit_peak": [(2, 65, 24)] * 3,
    "mlp": [(2, 32)] * 5,
}


def small_model(name: str, **extra) -> M.SigregPreTrainedModel:
    torch.manual_seed(0)
    return create_model(name, **{**SMALL[name], **extra})


def images(batch: int = 2, chans: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(seed))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- full-size reference models


@pytest.fixture(scope="module")
def full_models() -> dict[str, M.SigregPreTrainedModel]:
    """The paper's CIFAR-100 models at their reference sizes (construction only, no forward)."""
    return {name: create_model(name) for name in list_models()}


def _vit_block_params(dim: int, mlp_hidden: int, qkv_bias: bool) -> int:
    norms = 2 * (2 * dim)
    qkv = dim * 3 * dim + (3 * dim if qkv_bias else 0)
    proj = dim * dim + dim
    mlp = (dim * mlp_hidden + mlp_hidden) + (mlp_hidden * dim + dim)
    return norms + qkv + proj + mlp


def test_reference_parameter_counts(full_models):
    # ResNet18, CIFAR variant, 100 classes: the well-known 11.22M (11,173,962 for 10 classes + 90 * 513).
    assert n_params(full_models["resnet18_cifar"]) == 11_220_132
    assert abs(n_params(full_models["resnet18_cifar"]) / 1e6 - 11.2) < 0.05

    patch_embed = lambda dim: 3 * 4 * 4 * dim + dim  # noqa: E731  (conv 4x4 stride 4 + bias)
    # ViT first round: dim 256, depth 6, MLP ratio 2, no qkv bias, no CLS / pos-emb, final LN, head.
    dim, depth = 256, 6
    expected_rope = patch_embed(dim) + depth * _vit_block_params(dim, 2 * dim, False) + 2 * dim + dim * 100 + 100
    assert n_params(full_models["vit_rope"]) == expected_rope == 3_196_772

    # ViT Peak: dim 192, depth 9, MLP ratio 4, qkv bias, CLS + pos-emb for 64 + 1 tokens, final LN, head.
    dim, depth = 192, 9
    expected_peak = (
        patch_embed(dim) + dim + 65 * dim + depth * _vit_block_params(dim, 4 * dim, True) + 2 * dim + dim * 100 + 100
    )
    assert n_params(full_models["vit_peak"]) == expected_peak == 4_045_540

    # MLP: 3072 -> 1024 -> 1024 x 4 -> 100, all with biases.
    expected_mlp = (3072 * 1024 + 1024) + 4 * (1024 * 1024 + 1024) + (1024 * 100 + 100)
    assert n_params(full_models["mlp"]) == expected_mlp == 7_447_652


def test_reference_architectures(full_models):
    resnet = full_models["resnet18_cifar"]
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in resnet.modules())
    assert [resnet.get_submodule(f"layer{i}.0").conv1.stride for i in range(1, 5)] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert resnet.layer1[0].downsample is None
    for i in range(2, 5):  # 1x1 conv + BN shortcut on every shape change
        ds = resnet.get_submodule(f"layer{i}.0.downsample")
        assert isinstance(ds[0], torch.nn.Conv2d) and ds[0].kernel_size == (1, 1)
        assert isinstance(ds[1], torch.nn.BatchNorm2d)

    rope = full_models["vit_rope"]
    assert rope.blocks[0].attn.qkv.bias is None and rope.blocks[0].attn.q_bias is None
    assert not any(isinstance(m, DropPath) for m in rope.modules())
    assert not hasattr(rope, "cls_token") and not hasattr(rope, "pos_embed")
    assert rope.blocks[0].attn.num_heads == 8 and rope.blocks[0].mlp.fc1.out_features == 512

    peak = full_models["vit_peak"]
    assert peak.blocks[0].attn.num_heads == 3 and peak.blocks[0].mlp.fc1.out_features == 768
    assert peak.blocks[0].attn.qkv.bias is not None
    assert all(not b.attn.fused_attn for b in peak.blocks)  # softmax(QK^T/sqrt(d))V written out

    mlp = full_models["mlp"]
    assert [type(m).__name__ for m in mlp.modules()].count("Linear") == 6
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d, torch.nn.Dropout)) for m in mlp.modules())


# ----------------------------------------------------------------------------- taps


EXPECTED_FULL_TAPS = {
    "resnet18_cifar": [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)],
    "vit_rope": [f"blocks.{i}" for i in range(6)],
    "vit_peak": [f"blocks.{i}" for i in range(9)],
    "mlp": [f"hidden.{i}" for i in range(5)],
}
EXPECTED_POOLING = {"resnet18_cifar": "mean", "vit_rope": "mean", "vit_peak": "mean", "mlp": "none"}


@pytest.mark.parametrize("name", sorted(EXPECTED_FULL_TAPS))
def test_tap_patterns_select_exactly_the_papers_tap_points(full_models, name):
    model = full_models[name]
    matched = [n for n, _ in model.named_modules() if any(re.fullmatch(p, n) for p in model.sigreg_tap_patterns)]
    assert matched == EXPECTED_FULL_TAPS[name]
    assert model.sigreg_tap_names() == matched
    assert type(model).sigreg_tap_pooling == EXPECTED_POOLING[name]
    kinds = {type(model.get_submodule(n)).__name__ for n in matched}
    assert (
        kinds
        == {"resnet18_cifar": {"BasicBlock"}, "vit_rope": {"EvaBlock"}, "vit_peak": {"Block"}, "mlp": {"Linear"}}[name]
    )


@pytest.mark.parametrize("name", sorted(SMALL))
def test_hooks_see_plain_tensors_equal_to_hidden_states(name):
    model = small_model(name).eval()
    seen: list[torch.Tensor] = []
    handles = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, out: seen.append(out))
        for n in model.sigreg_tap_names()
    ]
    out = model(images(), output_hidden_states=True)
    for h in handles:
        h.remove()
    assert all(type(t) is torch.Tensor for t in seen)
    assert [tuple(t.shape) for t in seen] == SMALL_TAP_SHAPES[name]
    # hidden_states = (input of the first tapped layer, then one entry per tap point)
    assert len(out.hidden_states) == len(seen) + 1
    for hooked, hidden in zip(seen, out.hidden_states[1:], strict=True):
        torch.testing.assert_close(hooked, hidden, rtol=0, atol=0)
    if name == "resnet18_cifar":  # after the block's ReLU
        assert all(bool((t >= 0).all()) for t in seen)
    if name == "mlp":  # pre-activation, not overwritten by the ReLU
        assert all(bool((t < 0).any()) for t in seen)


# ----------------------------------------------------------------------------- forward / loss / shapes


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_shapes_loss_and_tuple_output(name):
    model = small_model(name)
    x, y = images(batch=4), torch.tensor([0, 3, 6, 1])
    out = model(x, labels=y)
    assert isinstance(out, ImageClassifierOutput)
    assert out.logits.shape == (4, 7) and out.hidden_states is None
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, y))
    loss, logits = model(x, labels=y, return_dict=False)
    assert logits.shape == (4, 7) and loss.dim() == 0
    (logits_only,) = model.eval()(x, return_dict=False)
    assert logits_only.shape == (4, 7)


def test_num_items_in_batch_sums_then_divides():
    model = small_model("mlp").eval()
    x, y = images(batch=4), torch.tensor([0, 3, 6, 1])
    out = model(x, labels=y, num_items_in_batch=8)
    expected = torch.nn.functional.cross_entropy(out.logits, y, reduction="sum") / 8
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_float_labels_raise_a_clear_error(name):
    model = small_model(name)
    soft = torch.full((2, 7), 1 / 7)
    with pytest.raises(ValueError, match="integer class indices.*soft-target cross-entropy from outputs.logits"):
        model(images(), labels=soft)
    with pytest.raises(ValueError, match="integer class indices"):
        model(images(), labels=torch.tensor([1.0, 2.0]))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="in_chans=3 but pixel_values have 1 channels"):
        small_model("mlp")(images(chans=1))
    with pytest.raises(ValueError, match="image_size=32 but pixel_values are 8x8"):
        small_model("vit_peak")(images(size=8))
    with pytest.raises(ValueError, match=r"labels must have shape \[batch\]"):
        small_model("mlp")(images(), labels=torch.tensor([[1], [2]]))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        create_config("vit_rope", image_size=30)
    with pytest.raises(ValueError, match="divisible by 4"):
        create_config("vit_rope", hidden_size=36, num_attention_heads=6)
    with pytest.raises(ValueError, match="same length"):
        create_config("resnet18_cifar", widths=[8, 16], depths=[1])


def test_mlp_on_8x8_grey_digits():
    model = create_model("mlp", num_classes=10, image_size=8, in_chans=1)
    assert model.hidden[0].in_features == 64 and model.head.out_features == 10
    out = model(torch.rand(5, 1, 8, 8), labels=torch.arange(5))
    assert out.logits.shape == (5, 10) and torch.isfinite(out.loss)


def test_other_geometries_for_every_family():
    resnet = create_model("resnet18_cifar", num_classes=10, in_chans=1, stem_width=8, widths=[8, 16], depths=[1, 1])
    assert resnet(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)
    rope = create_model(
        "vit_rope",
        num_classes=10,
        image_size=8,
        patch_size=2,
        in_chans=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    assert rope(torch.randn(2, 1, 8, 8)).logits.shape == (2, 10)
    peak = create_model(
        "vit_peak",
        num_classes=10,
        image_size=8,
        patch_size=2,
        in_chans=1,
        hidden_size=12,
        num_hidden_layers=2,
        num_attention_heads=3,
    )
    assert peak(torch.randn(2, 1, 8, 8)).logits.shape == (2, 10) and peak.pos_embed.shape == (1, 17, 12)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_parameter(name):
    model = small_model(name).train()
    model(images(batch=8), labels=torch.arange(8) % 7).loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


# ----------------------------------------------------------------------------- ViT specifics


def test_peak_drop_path_rises_linearly_to_0_1(full_models):
    peak = full_models["vit_peak"]
    rates = [b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0 for b in peak.blocks]
    rates2 = [b.drop_path2.drop_prob if isinstance(b.drop_path2, DropPath) else 0.0 for b in peak.blocks]
    expected = [0.1 * i / 8 for i in range(9)]
    assert rates == pytest.approx(expected) and rates2 == pytest.approx(expected)
    assert rates[-1] == pytest.approx(0.1) and rates[0] == 0.0
    assert drop_path_rates(0.3, 1) == [0.0]
    # drop path is active in training (outputs vary) and off in evaluation (deterministic)
    model = small_model("vit_peak", drop_path_rate=0.5)
    x = images(batch=4)
    model.train()
    assert not torch.allclose(model(x).logits, model(x).logits)
    model.eval()
    torch.testing.assert_close(model(x).logits, model(x).logits)


def test_peak_explicit_attention_matches_sdpa():
    model = small_model("vit_peak").eval()
    x = images()
    explicit = model(x).logits
    for block in model.blocks:
        block.attn.fused_attn = True
    torch.testing.assert_close(model(x).logits, explicit, rtol=1e-5, atol=1e-5)


def _page_rope(q: torch.Tensor, row: int, col: int, base: float = 10000.0) -> torch.Tensor:
    """The reference page's 2-D RoPE of one head vector ``q [d]`` at grid position (row, col), written out."""
    d = q.shape[-1]
    d_x, d_y = d // 2, d - d // 2
    f_x = [base ** (-2 * j / d_x) for j in range(d_x // 2)]
    f_y = [base ** (-2 * j / d_y) for j in range(d_y // 2)]
    angle = torch.tensor([col * f for f in f_x] * 2 + [row * f for f in f_y] * 2, dtype=torch.float64)
    rotated_half = torch.cat([-q[d // 2 :], q[: d // 2]])
    return q * angle.cos() + rotated_half * angle.sin()


def test_reference_rope_table_is_the_pages_formula():
    head_dim, (height, width) = 32, (8, 8)  # the first-round ViT: d = 256 / 8 heads, an 8x8 grid
    table = reference_rope_2d_embedding((height, width), head_dim).double()
    assert table.shape == (64, 64)
    sin, cos = table.chunk(2, dim=-1)
    # base 10000: token (row 0, column 1) has angles f_x on channels 0..15, nothing on the row half
    f_x = torch.tensor([10000.0 ** (-2 * j / 16) for j in range(8)], dtype=torch.float64)
    torch.testing.assert_close(torch.atan2(sin[1, :8], cos[1, :8]), f_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.atan2(sin[1, 8:16], cos[1, 8:16]), f_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin[1, 16:], torch.zeros(16, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=gen, dtype=torch.float64)
    for row, col in [(0, 0), (0, 5), (3, 0), (2, 7), (7, 7)]:  # row-major tokens
        expected = _page_rope(q, row, col)
        got = apply_rot_embed_cat(q, table[row * width + col], half=True)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the two members of a pair turn by different angles: not a rotation (norms change), as the page says
    assert abs(_page_rope(q, 3, 5).norm() - q.norm()) > 1e-3


def test_rope_vit_attention_is_the_reference_attention_written_out():
    """One first-round block's attention against qkv -> the page's RoPE on q, k -> softmax(QK^T/sqrt(d)) V -> proj."""
    model = create_model("vit_rope", num_hidden_layers=1, num_classes=10).eval()  # d = 256, 8 heads, base 10000
    assert (model.config.rope_variant, model.config.rope_temperature) == ("reference", 10000.0)
    attn = model.blocks[0].attn
    x = torch.randn(2, 64, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = attn(x, rope=model.rope_embedding()).double()
        qkv = (x.double() @ attn.qkv.weight.double().T).reshape(2, 64, 3, 8, 32)
        q, k, v = qkv.unbind(2)  # [B, N, H, 32]
        q_rot, k_rot = torch.empty_like(q), torch.empty_like(k)
        for n in range(64):
            row, col = divmod(n, 8)
            for b in range(2):
                for h in range(8):
                    q_rot[b, n, h] = _page_rope(q[b, n, h], row, col)
                    k_rot[b, n, h] = _page_rope(k[b, n, h], row, col)
        scores = torch.einsum("bnhd,bmhd->bhnm", q_rot, k_rot) / 32**0.5
        out = torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v).reshape(2, 64, 256)
        expected = out @ attn.proj.weight.double().T + attn.proj.bias.double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_axial_rope_is_an_option_and_older_saved_configs_load_as_axial(tmp_path):
    axial = small_model("vit_rope", rope_variant="axial", rope_temperature=100.0)
    assert not axial.blocks[0].attn.rotate_half
    torch.testing.assert_close(axial.rope_embedding(), rope_2d_embedding((8, 8), 16, temperature=100.0))
    reference = small_model("vit_rope")
    assert reference.blocks[0].attn.rotate_half
    assert (reference.rope_embedding() - axial.rope_embedding()).abs().max() > 0.1
    with pytest.raises(ValueError, match="rope_variant must be one of \\('reference', 'axial'\\), got 'timm'"):
        create_config("vit_rope", rope_variant="timm")
    # a config saved before rope_variant existed described timm's axial RoPE; a new one keeps its variant
    reference.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).rope_variant == "reference"
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["rope_variant"]
    saved["rope_temperature"] = 100.0
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert old.config.rope_variant == "axial" and not old.blocks[0].attn.rotate_half


def test_rope_table_encodes_relative_2d_positions():
    head_dim, grid = 16, (6, 6)
    rope = rope_2d_embedding(grid, head_dim, temperature=100.0)
    assert rope.shape == (36, 2 * head_dim)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(head_dim, generator=gen), torch.randn(head_dim, generator=gen)
    rq = apply_rot_embed_cat(q.expand(36, -1), rope).view(6, 6, head_dim)
    rk = apply_rot_embed_cat(k.expand(36, -1), rope).view(6, 6, head_dim)
    # rotations preserve norms ...
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(6, 6))

    # ... and the score depends only on the (row, col) offset between query and key
    def score(pq, pk):
        return float(rq[pq] @ rk[pk])

    assert score((1, 2), (3, 1)) == pytest.approx(score((2, 4), (4, 3)), abs=1e-5)
    assert score((0, 0), (2, 3)) == pytest.approx(score((3, 2), (5, 5)), abs=1e-5)
    assert abs(score((1, 2), (3, 1)) - score((1, 2), (1, 3))) > 1e-3  # but does depend on the offset
    assert abs(score((0, 0), (0, 2)) - score((0, 0), (2, 0))) > 1e-3  # rows and columns rotate differently


def _permute_patches(x: torch.Tensor, patch: int, perm: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    tiles = x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, patch, patch)
    tiles = tiles[:, perm]
    return tiles.reshape(b, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def test_rope_vit_sees_patch_positions_and_its_no_rope_twin_does_not():
    model = small_model("vit_rope").eval()
    with torch.no_grad():  # sharpen attention: at init (std 0.02) it is nearly uniform, hiding positions
        for block in model.blocks:
            block.attn.qkv.weight.mul_(25.0)
    x = images()
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    x_perm = _permute_patches(x, 4, perm)
    with_rope = model(x).logits, model(x_perm).logits
    scale = with_rope[0].abs().max()
    assert (with_rope[0] - with_rope[1]).abs().max() > 1e-2 * scale

    # The same weights without RoPE: no position information at all, mean pooling -> permutation invariant.
    model.rope_embedding = lambda device=None: None
    no_rope = model(x).logits, model(x_perm).logits
    torch.testing.assert_close(no_rope[0], no_rope[1], rtol=1e-5, atol=1e-5)
    assert (no_rope[0] - with_rope[0]).abs().max() > 1e-2 * scale


def test_vit_init_follows_the_reference():
    torch.manual_seed(0)
    rope = create_model("vit_rope", num_hidden_layers=2)
    w = torch.cat([m.weight.flatten() for m in rope.modules() if isinstance(m, torch.nn.Linear)])
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    peak = create_model("vit_peak", num_hidden_layers=2)
    assert peak.config.init_scheme == "reference"
    bound = (6 / (192 + 100)) ** 0.5  # xavier-uniform head
    assert peak.head.weight.abs().max() <= bound and peak.head.weight.std() > 0.8 * bound / 3**0.5
    assert peak.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert peak.cls_token.abs().max() > 0
    # every other layer keeps PyTorch's default: kaiming-uniform(a=sqrt(5)) weights, std 1/sqrt(3 fan_in)
    # (the page: about 0.042 for qkv/proj/fc1, 0.021 for fc2), biases (head's too) uniform(+-1/sqrt(fan_in))
    linears = {"attn.qkv": 192, "attn.proj": 192, "mlp.fc1": 192, "mlp.fc2": 768}
    for block in peak.blocks:
        for name, fan_in in linears.items():
            layer = block.get_submodule(name)
            bound = fan_in**-0.5
            assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound, name
            assert layer.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05), name
            assert layer.bias.std().item() == pytest.approx(bound / 3**0.5, rel=0.25), name
    assert peak.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.042, abs=0.001)
    assert peak.blocks[0].mlp.fc2.weight.std().item() == pytest.approx(0.021, abs=0.001)
    assert 0 < peak.head.bias.abs().max() <= 192**-0.5
    # the project's earlier init stays an option: trunc-normal(0.02) block weights, zero biases
    old = create_model("vit_peak", num_hidden_layers=2, init_scheme="trunc_normal")
    assert old.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert old.blocks[0].mlp.fc2.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(m.bias.abs().max() == 0 for m in old.modules() if isinstance(m, torch.nn.Linear))
    with pytest.raises(ValueError, match="init_scheme must be one of"):
        create_config("vit_peak", init_scheme="xavier")


# ----------------------------------------------------------------------------- registry / Auto classes


def test_registry():
    assert list_models() == ["mlp", "resnet18_cifar", "vit_peak", "vit_rope"]
    assert list_models("vit_*") == ["vit_peak", "vit_rope"]
    assert isinstance(create_model("sigreg-mlp", hidden_size=8), M.SigregMLPForImageClassification)
    assert create_config("mlp").num_labels == 100
    assert create_config("mlp", num_classes=10).num_labels == 10
    with pytest.raises(ValueError, match="Unknown model 'resnet50'. Available: mlp, resnet18_cifar"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="conflicts"):
        create_config("mlp", num_classes=10, num_labels=5)
    for name, (config_cls, model_cls) in M.MODEL_REGISTRY.items():
        assert config_cls.model_type.startswith("sigreg-")
        assert AutoConfig.for_model(config_cls.model_type).__class__ is config_cls
        model = AutoModelForImageClassification.from_config(create_config(name, **SMALL[name]))
        assert type(model) is model_cls


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_pretrained_round_trip_through_auto_class(tmp_path, name):
    extra = {"qkv_bias": True} if name == "vit_rope" else {}  # also covers EvaAttention's k_bias buffer
    model = small_model(name, **extra)
    model.train()
    model(images(batch=4))  # move BatchNorm running statistics away from their init
    model.eval()
    x = images(seed=3)
    expected = model(x).logits
    model.save_pretrained(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    config_cls, model_cls = M.MODEL_REGISTRY[name]
    assert config["model_type"] == config_cls.model_type
    assert config["auto_map"] == {
        "AutoConfig": f"configuration_sigreg.{config_cls.__name__}",
        "AutoModelForImageClassification": f"{model_cls.__module__.rsplit('.', 1)[-1]}.{model_cls.__name__}",
    }
    assert (tmp_path / "model.safetensors").is_file()
    for code in ("configuration_sigreg.py", "modeling_common.py", f"{model_cls.__module__.rsplit('.', 1)[-1]}.py"):
        assert (tmp_path / code).is_file(), code

    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is model_cls and not loaded.training
    assert loaded.config.to_diff_dict() == model.config.to_diff_dict()
    torch.testing.assert_close(loaded(x).logits, expected, rtol=0, atol=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    if name == "vit_rope":  # non-persistent buffer, rebuilt by _init_weights after meta-device loading
        assert all(bool((b.attn.k_bias == 0).all()) for b in loaded.blocks)


_REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys, importlib.abc

    class BlockSigreg(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname == "sigreg_hf" or fullname.startswith("sigreg_hf."):
                raise ImportError(f"{fullname} is deliberately unavailable in this test")
            return None

    sys.meta_path.insert(0, BlockSigreg())
    import torch
    from transformers import AutoModelForImageClassification

    for source in sys.argv[1:]:
        folder, _, repo_id = source.partition("=")
        model = AutoModelForImageClassification.from_pretrained(repo_id or folder, trust_remote_code=True).eval()
        x, expected = torch.load(folder + "/check.pt")
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        torch.testing.assert_close(model(x).logits, expected, rtol=0, atol=0)
        print("OK", type(model).__name__)
    assert not any(m == "sigreg_hf" or m.startswith("sigreg_hf.") for m in sys.modules)
    """
)


def _fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as a downloaded Hub snapshot of ``repo_id`` (what HF_HUB_OFFLINE=1 resolves)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())


def test_saved_folder_loads_with_trust_remote_code_without_sigreg_hf(tmp_path):
    """A saved folder, and the same files as a cached Hub repo, load where sigreg_hf cannot be imported."""
    folders = []
    for name in sorted(SMALL):
        folder = tmp_path / name
        model = small_model(name).eval()
        x = images(seed=5)
        model.save_pretrained(folder)
        torch.save((x, model(x).logits), folder / "check.pt")
        folders.append(str(folder))
    _fake_hub_cache(tmp_path / "hub", "sigreg-test/mlp", tmp_path / "mlp")
    folders.append(f"{tmp_path / 'mlp'}=sigreg-test/mlp")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_MODULES_CACHE": str(tmp_path / "modules_cache"),
        "PYTHONPATH": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_CODE_SCRIPT, *folders],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK") == 5, result.stdout
    assert Path(tmp_path / "modules_cache").is_dir()


@pytest.mark.parametrize("name", ["vit_peak", "resnet18_cifar"])
def test_from_pretrained_with_a_new_head_reinitialises_only_the_head(tmp_path, name):
    model = small_model(name)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    head = "head" if name == "vit_peak" else "fc"
    new_state, old_state = loaded.state_dict(), model.state_dict()
    assert new_state[f"{head}.weight"].shape[0] == 3
    w = new_state[f"{head}.weight"]
    assert torch.isfinite(w).all() and 0 < w.abs().max() < 1.0
    for key, value in old_state.items():
        if not key.startswith(f"{head}."):
            torch.testing.assert_close(new_state[key], value, rtol=0, atol=0)
    assert loaded(images()).logits.shape == (2, 3)
