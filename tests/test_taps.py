"""SIGRegulariser without Trainer: module selection, pooling, hooks, generator, custom loops."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from sigreg_test_models import FAMILIES, IMAGE, TinyMLP
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from sigreg_hf.losses import sigreg_strong, sigreg_weak
from sigreg_hf.taps import (
    SIGRegulariser,
    auto_taps,
    clean_module_name,
    first_tensor,
    pool_hidden_state,
    resolve_taps,
    sketch_seed,
    step_generator,
    unwrap_model,
)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------------------
# pooling
# ------------------------------------------------------------------------------------------------
def test_pooling_shapes_and_values():
    maps = torch.randn(4, 6, 5, 3)
    torch.testing.assert_close(pool_hidden_state(maps), maps.mean(dim=(2, 3)))
    torch.testing.assert_close(pool_hidden_state(maps, "mean"), maps.mean(dim=(2, 3)))
    flat = pool_hidden_state(maps, "flatten")
    assert flat.shape == (4 * 5 * 3, 6)
    torch.testing.assert_close(flat[1], maps[0, :, 0, 1])
    tokens = torch.randn(4, 7, 8)
    torch.testing.assert_close(pool_hidden_state(tokens), tokens.mean(dim=1))
    torch.testing.assert_close(pool_hidden_state(tokens, "cls"), tokens[:, 0])
    torch.testing.assert_close(pool_hidden_state(tokens, "flatten"), tokens.reshape(28, 8))
    vectors = torch.randn(4, 8)
    for pooling in ("auto", "mean", "cls", "flatten", "none"):
        assert pool_hidden_state(vectors, pooling) is vectors


def test_token_mask_pools_real_tokens_only():
    tokens = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected_mean = torch.stack([tokens[0, :3].mean(0), tokens[1].mean(0), tokens[2, 0]])
    torch.testing.assert_close(pool_hidden_state(tokens, "mean", token_mask=mask), expected_mean)
    torch.testing.assert_close(pool_hidden_state(tokens, "auto", token_mask=mask.bool()), expected_mean)
    expected_flat = torch.cat([tokens[0, :3], tokens[1], tokens[2, :1]])
    torch.testing.assert_close(pool_hidden_state(tokens, "flatten", token_mask=mask), expected_flat)
    torch.testing.assert_close(pool_hidden_state(tokens, "cls", token_mask=mask), tokens[:, 0])
    # an all-ones mask changes nothing
    ones = torch.ones(3, 5, dtype=torch.long)
    torch.testing.assert_close(pool_hidden_state(tokens, "mean", token_mask=ones), tokens.mean(1))
    # gradients reach only the real tokens
    leaf = tokens.clone().requires_grad_(True)
    pool_hidden_state(leaf, "mean", token_mask=mask).sum().backward()
    assert torch.all(leaf.grad[0, 3:] == 0) and torch.all(leaf.grad[0, :3] != 0)


def test_token_mask_errors():
    tokens = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"token_mask has shape \(2, 6\).*sigreg_mask_padding=False"):
        pool_hidden_state(tokens, "mean", token_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        pool_hidden_state(tokens, "mean", token_mask=torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))
    # without the check (no host sync, as in the trainer) an empty row pools to zeros, the others as before
    pooled = pool_hidden_state(
        tokens, "mean", token_mask=torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]), check_empty_rows=False
    )
    torch.testing.assert_close(pooled, torch.stack([tokens[0, :2].mean(0), torch.zeros(4)]))


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_padding_does_not_change_the_loss_of_text_models(family):
    """Extra (right) padding leaves the real tokens' hidden states unchanged, so the masked loss is unchanged;
    without the mask the padding tokens enter the statistic."""
    model = FAMILIES[family].model().eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (48, 8), generator=g)  # more rows than the width, so the covariance has full rank
    lengths = torch.randint(2, 9, (48,), generator=g)
    mask = (torch.arange(8) < lengths[:, None]).long()
    padded_ids = torch.cat([ids * mask, torch.zeros(48, 4, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(48, 4, dtype=torch.long)], dim=1)
    for pooling in ("mean", "flatten"):
        for masked in (True, False):
            reg = SIGRegulariser(model, mode="weak", pooling=pooling, mask_padding=masked, sketch_dim=16)
            pooled, values = [], []
            for x, m in ((ids * mask, mask), (padded_ids, padded_mask)):
                with reg, torch.no_grad():
                    model(input_ids=x, attention_mask=m)
                    pooled.append(torch.cat(list(reg.pooled(attention_mask=m).values()), dim=1))
                    values.append(reg.loss(step=3, attention_mask=m).item())
            if masked:
                assert pooled[0].shape[0] == (int(mask.sum()) if pooling == "flatten" else 48)
                torch.testing.assert_close(pooled[0], pooled[1], rtol=1e-4, atol=1e-5)
                assert values[0] == pytest.approx(values[1], rel=1e-5)
            elif pooling == "flatten":  # every position is a sample, padding included
                assert pooled[0].shape[0] == 48 * 8 and pooled[1].shape[0] == 48 * 12
            else:
                assert (pooled[0] - pooled[1]).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["weak", "strong"])
def test_padding_is_left_out_without_selecting_the_real_tokens(mode, caplog):
    """check_finite=False (the trainer's setting): flattened token states keep every position and the padding
    mask goes to the losses as sample_mask (no data-dependent shape, so no host sync); loss and gradients equal
    the selection of the real tokens (check_finite=True)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (6, 8), generator=g)
    mask = (torch.arange(8) < torch.tensor([8, 3, 5, 1, 8, 6])[:, None]).long()
    results = []
    for check_finite in (True, False):
        model = FAMILIES["llama"].model()
        reg = SIGRegulariser(model, mode=mode, sketch_dim=16, check_finite=check_finite)
        assert reg.pooling == "flatten"
        with reg:
            model(input_ids=ids, attention_mask=mask)
            loss = reg.loss(step=1, attention_mask=mask)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()], reg.last_batch_counted))
    (selected, grads, counted), (masked, masked_grads, counted_on_device) = results
    assert counted is True and isinstance(counted_on_device, torch.Tensor) and bool(counted_on_device)
    torch.testing.assert_close(masked, selected, rtol=1e-5, atol=1e-6)
    for want, got in zip(grads, masked_grads, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # a batch with a single real token: too few samples, decided on the device (a zero in the graph)
    model = FAMILIES["llama"].model()
    reg = SIGRegulariser(model, mode=mode, sketch_dim=16, check_finite=False)
    one = torch.zeros(6, 8, dtype=torch.long)
    one[2, 0] = 1
    with reg, caplog.at_level(logging.WARNING, logger="sigreg_hf.taps"):
        model(input_ids=ids, attention_mask=one)
        loss = reg.loss(step=1, attention_mask=one)
        loss.backward()
        assert loss.item() == 0.0 and not bool(reg.last_batch_counted)
        assert reg.num_skipped_batches == 1 and "too small for the statistic" in caplog.text
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_encoder_decoder_mask_is_not_applied_to_decoder_states():
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2))
    assert SIGRegulariser(model, mode="weak").layer_names == ["encoder.block.0", "encoder.block.1"]
    with pytest.raises(ValueError, match=r"decoder modules \['decoder.block.0', 'decoder.block.1'\].*encoder's tokens"):
        SIGRegulariser(model, mode="weak", layers=[r"decoder\.block\.\d+"])
    reg = SIGRegulariser(model, mode="weak", layers=[r"decoder\.block\.\d+"], mask_padding=False)
    ids, mask = torch.randint(1, 60, (4, 8)), torch.ones(4, 8, dtype=torch.long)
    with reg:
        model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.randint(1, 60, (4, 5)))
        assert torch.isfinite(reg.loss(attention_mask=mask))


def test_attention_mask_must_be_two_dimensional():
    model = FAMILIES["bert"].model()
    reg = SIGRegulariser(model, mode="weak")
    ids = torch.randint(1, 60, (4, 8))
    with reg:
        model(input_ids=ids)
        with pytest.raises(ValueError, match=r"attention_mask must be a \[B, L\] tensor.*mask_padding=False"):
            reg.loss(attention_mask=torch.ones(4, 1, 8, 8))
    with pytest.raises(ValueError, match="mask_padding must be True or False"):
        SIGRegulariser(model, mode="weak", mask_padding="yes")


@pytest.mark.parametrize(
    ("shape", "pooling", "message"),
    [
        ((4, 7, 8), "none", "pooling='none' needs"),
        ((4, 6, 5, 3), "cls", "applies to token states"),
        ((4,), "auto", "cannot pool"),
        ((4, 8), "max", "pooling must be one of"),
    ],
)
def test_pooling_errors(shape, pooling, message):
    with pytest.raises(ValueError, match=message):
        pool_hidden_state(torch.randn(*shape), pooling)


def test_first_tensor_of_tuples_and_model_outputs():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert first_tensor(a) is a
    assert first_tensor((a, b)) is a
    assert first_tensor((None, (a,), b)) is a
    assert first_tensor(BaseModelOutput(last_hidden_state=a, hidden_states=(b,))) is a
    assert first_tensor(("text", 3)) is None


# ------------------------------------------------------------------------------------------------
# module selection
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_taps_land_on_the_papers_modules(family):
    fam = FAMILIES[family]
    model = fam.model()
    reg = SIGRegulariser(model, mode="weak")
    assert reg.layer_names == fam.taps
    expected_pooling = {"gpt2": "flatten", "llama": "flatten", "mlp": "none", "timm": "auto"}.get(family, "mean")
    assert reg.pooling == expected_pooling


def test_auto_taps_for_timm_convnets_and_raw_timm_models():
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    wrapped = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet18", num_labels=10))
    names = SIGRegulariser(wrapped).layer_names
    assert names == [f"timm_model.layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    convnext = timm.create_model("convnext_atto", num_classes=10)
    patterns, pooling = auto_taps(convnext)  # hierarchical: each stage's output (see test_taps_safety.py)
    assert resolve_taps(convnext, patterns) == [f"stages.{i}" for i in range(4)] and pooling == "mean"


def test_class_attributes_take_precedence():
    class Declared(TinyMLP):
        sigreg_tap_patterns = [r"net\.3"]
        sigreg_tap_pooling = "flatten"

    reg = SIGRegulariser(Declared())
    assert reg.layer_names == ["net.3"] and reg.pooling == "flatten"
    # an explicit pooling overrides the preset's
    assert SIGRegulariser(Declared(), pooling="mean").pooling == "mean"


def test_generic_fallback_and_no_preset_error():
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.body = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()) for _ in range(3))

    assert SIGRegulariser(Blocks()).layer_names == ["body.0", "body.1", "body.2"]

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

    with pytest.raises(ValueError, match=r"no preset for Flat(.|\n)*conv"):
        SIGRegulariser(Flat())


def test_unmatched_pattern_lists_available_modules():
    model = FAMILIES["vit"].model()
    with pytest.raises(ValueError) as info:
        SIGRegulariser(model, layers=[r"vit\.layers\.\d+", r"vit\.encoder\.layer\.\d+"])
    message = str(info.value)
    assert r"vit\.encoder\.layer\.\d+" in message and "re.fullmatch" in message
    assert "vit.layers.0" in message and "classifier" in message
    with pytest.raises(ValueError, match="not a valid regular expression"):
        SIGRegulariser(model, layers=["vit.layers.(0"])


def test_patterns_are_full_matches():
    model = FAMILIES["vit"].model()
    # "vit.layers.1" would also *search*-match "vit.layers.1.attention..." but fullmatch keeps the block only
    assert SIGRegulariser(model, layers=[r"vit\.layers\.1"]).layer_names == ["vit.layers.1"]
    assert SIGRegulariser(model, layers="vit\\.layers\\.0,classifier").layer_names == ["vit.layers.0", "classifier"]


def test_wrappers_are_looked_through():
    model = TinyMLP()
    compiled = torch.compile(model, backend="eager")
    assert unwrap_model(compiled) is model
    assert unwrap_model(nn.DataParallel(model)) is model
    assert SIGRegulariser(compiled).layer_names == ["net.1", "net.3"]
    assert clean_module_name("_fsdp_wrapped_module.net._fsdp_wrapped_module.1") == "net.1"
    assert clean_module_name("_orig_mod.blocks.0._checkpoint_wrapped_module") == "blocks.0"


@pytest.mark.slow
def test_hooks_fire_under_torch_compile():
    torch.manual_seed(0)
    model = TinyMLP()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(16, 3, IMAGE, IMAGE)
    with SIGRegulariser(compiled, seed=3) as reg:
        compiled(x)
        got = reg.loss(step=0)
    with SIGRegulariser(model, seed=3) as reg:
        model(x)
        want = reg.loss(step=0)
    torch.testing.assert_close(got, want)
    assert _hooks(model) == 0


# ------------------------------------------------------------------------------------------------
# hooks, loss, generator
# ------------------------------------------------------------------------------------------------
def test_custom_loop_loss_matches_the_losses_on_pooled_hidden_states():
    torch.manual_seed(0)
    model = FAMILIES["vit"].model()
    x = torch.randn(8, 3, IMAGE, IMAGE)
    blocks = {}
    handles = [
        model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: blocks.__setitem__(n, o))
        for name in ("vit.layers.0", "vit.layers.1")
    ]
    model(pixel_values=x)
    for h in handles:
        h.remove()
    for mode, fn, kwargs in (("weak", sigreg_weak, {"sketch_dim": 16}), ("strong", sigreg_strong, {"num_slices": 16})):
        reg = SIGRegulariser(model, mode=mode, sketch_dim=16, seed=7)
        with reg:
            out = model(pixel_values=x)
            loss = reg.loss(step=5)
        expected = [
            fn(blocks[name].mean(dim=1), generator=step_generator(7, 5, index), **kwargs)
            for index, name in enumerate(blocks)
        ]
        torch.testing.assert_close(loss, torch.stack(expected).mean())
        assert list(reg.layer_losses) == list(blocks)
        assert loss.dtype == torch.float32
        (0.9 * out.logits.logsumexp(-1).mean() + 0.1 * loss).backward()
        assert model.vit.layers[0].attention.q_proj.weight.grad is not None
        model.zero_grad()
    assert _hooks(model) == 0


def test_hooks_removed_on_exception_and_nothing_captured_outside():
    model = TinyMLP()
    reg = SIGRegulariser(model)
    with pytest.raises(RuntimeError, match="boom"), reg:
        assert _hooks(model) == 2 and reg.is_attached
        model(torch.randn(4, 3, IMAGE, IMAGE))
        raise RuntimeError("boom")
    assert _hooks(model) == 0 and not reg.is_attached and reg.captured == {}
    model(torch.randn(4, 3, IMAGE, IMAGE))
    assert reg.captured == {}
    with pytest.raises(RuntimeError, match="captured no hidden states"):
        reg.loss()


def test_generator_depends_on_seed_step_and_layer_only():
    def draw(seed, step, layer):
        return torch.randn(5, generator=step_generator(seed, step, layer))

    torch.testing.assert_close(draw(1, 2, 3), draw(1, 2, 3))
    torch.manual_seed(123)  # the global RNG plays no part
    torch.testing.assert_close(draw(1, 2, 3), draw(1, 2, 3))
    seeds = {sketch_seed(s, t, layer) for s in range(3) for t in range(50) for layer in range(8)}
    assert len(seeds) == 3 * 50 * 8
    assert not torch.equal(draw(1, 2, 3), draw(1, 3, 2))


def test_step_counter_when_no_step_is_given():
    torch.manual_seed(0)
    model = TinyMLP()
    x = torch.randn(16, 3, IMAGE, IMAGE)
    values = []
    with SIGRegulariser(model, layers=[r"net\.1"], sketch_dim=8) as reg:
        for _ in range(2):
            model(x)
            values.append(reg.loss())
        model(x)
        values.append(reg.loss(step=0))
    assert values[0] != values[1] and values[0] == values[2]


def test_select_hidden_states_override():
    class LastHidden(SIGRegulariser):
        def select_hidden_states(self, captured, outputs=None):
            return {"embeddings": outputs.hidden_states[0], "last": outputs.hidden_states[-1]}

    model = FAMILIES["vit"].model()
    x = torch.randn(8, 3, IMAGE, IMAGE)
    with LastHidden(model, mode="weak", layers=["classifier"], seed=1) as reg:
        out = model(pixel_values=x, output_hidden_states=True)
        loss = reg.loss(out, step=0)
    expected = [
        sigreg_weak(out.hidden_states[0].mean(dim=1), generator=step_generator(1, 0, 0)),
        sigreg_weak(out.hidden_states[-1].mean(dim=1), generator=step_generator(1, 0, 1)),
    ]
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    assert list(reg.layer_losses) == ["embeddings", "last"]


def test_config_object_and_option_errors(tmp_path):
    from sigreg_hf.config import SIGRegConfig

    config = SIGRegConfig(
        output_dir=str(tmp_path),
        sigreg_mode="strong",
        sigreg_layers=[r"net\.3"],
        sigreg_sketch_dim=8,
        sigreg_num_points=9,
        sigreg_t_max=3.0,
        seed=11,
    )
    reg = SIGRegulariser.from_args(TinyMLP(), config)
    assert (reg.mode, reg.layer_names, reg.sketch_dim, reg.num_points, reg.t_max, reg.seed) == (
        "strong",
        ["net.3"],
        8,
        9,
        3.0,
        11,
    )
    assert (reg.sketch_type, reg.strong_normalization, reg.pooling, reg.mask_padding) == (
        "gaussian", "seed", "auto", True
    )  # fmt: skip
    assert SIGRegulariser.from_args(TinyMLP(), config, mode="weak").mode == "weak"
    with pytest.raises(TypeError):
        SIGRegulariser(TinyMLP(), config)  # options are keyword arguments, not read from a config object
    with pytest.raises(ValueError, match="mode must be one of"):
        SIGRegulariser(TinyMLP(), mode="medium")
    with pytest.raises(ValueError, match="sketch_dim must be an integer"):
        SIGRegulariser(TinyMLP(), sketch_dim=0)
    capture_only = SIGRegulariser(TinyMLP(), mode="none")
    with capture_only:
        capture_only.model(torch.randn(4, 3, IMAGE, IMAGE))
        assert set(capture_only.pooled()) == {"net.1", "net.3"}
        with pytest.raises(ValueError, match=re.escape("mode='none') only captures")):
            capture_only.loss()
