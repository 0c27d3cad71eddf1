"""What the regulariser sees is what the model computed: in-place ops, repeated calls, hierarchical
backbones' stages, and batches too small for the statistic (issue 11, items 11, 12, 13 and 5)."""

from __future__ import annotations

import json
import logging
import math

import distributed_small_batch_worker as small_worker
import pytest
import timm
import torch
import transformers as tf
from sigreg_test_models import FAMILIES, image_data, losses, torchrun_ranks
from timm.models.metaformer import GroupNorm1, MetaFormer
from torch import nn

from sigreg_hf.losses import sigreg_strong, sigreg_weak
from sigreg_hf.soft_targets import soft_target_loss
from sigreg_hf.taps import SIGRegulariser, step_generator
from sigreg_hf.trainer import SIGRegTrainer


def _output_of(module: nn.Module) -> list[torch.Tensor]:
    """The tensors ``module`` returns, as returned (a test-side hook registered after the regulariser's)."""
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda m, a, out: seen.append(out))
    return seen


# ------------------------------------------------------------------------------------------------
# item 11: an in-place op after a tapped module
# ------------------------------------------------------------------------------------------------
def _mlp(inplace: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=inplace), nn.Linear(16, 16), nn.ReLU(inplace=inplace),
                         nn.Linear(16, 3))  # fmt: skip


def test_in_place_activation_does_not_change_what_is_regularised():
    x = torch.randn(32, 8)
    results = {}
    for inplace in (True, False):
        model = _mlp(inplace)
        reg = SIGRegulariser(model, mode="weak", sketch_dim=4)  # auto: the MLP's pre-activations
        assert reg.layer_names == ["0", "2"]
        steps = []
        with reg:
            for step in range(3):  # the first step copies; later steps copy only where something writes in place
                model.zero_grad()
                model(x)
                pooled = {k: v.detach().clone() for k, v in reg.pooled().items()}
                loss = reg.loss(step=step)
                loss.backward()
                steps.append((pooled, loss.detach(), [p.grad.clone() for p in model[:3].parameters()]))
        results[inplace] = steps
    pre_activation = nn.functional.linear(x, _mlp(False)[0].weight, _mlp(False)[0].bias)
    assert bool((pre_activation < 0).any())  # ReLU would change it
    for step in range(3):
        pooled, loss, grads = results[True][step]
        torch.testing.assert_close(pooled["0"], pre_activation)
        want_pooled, want_loss, want_grads = results[False][step]
        torch.testing.assert_close(loss, want_loss)
        for got, want in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(got, want)


def test_outputs_nothing_writes_into_are_captured_without_a_copy():
    model = _mlp(inplace=False)
    returned = _output_of(model[0])
    with SIGRegulariser(model, layers=["0"]) as reg:
        for step in range(3):
            model(torch.randn(16, 8))
            copied = reg.captured["0"] is not returned[-1]
            assert copied == (step == 0)  # checked once per train/eval mode, then captured as returned
            reg.loss(step=step)
        model.eval()  # a new mode is checked again
        model(torch.randn(16, 8))
        assert reg.captured["0"] is not returned[-1]
    in_place = _mlp(inplace=True)
    returned = _output_of(in_place[0])
    with SIGRegulariser(in_place, layers=["0"]) as reg:
        for step in range(3):
            in_place(torch.randn(16, 8))
            assert reg.captured["0"] is not returned[-1]  # always copied: ReLU(inplace=True) writes into it
            reg.loss(step=step)


class _SometimesInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.in_place = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return h.relu_() if self.in_place else h.relu()


def test_an_in_place_write_not_seen_before_raises_instead_of_training_wrong():
    model = _SometimesInPlace()
    with SIGRegulariser(model, layers=["linear"]) as reg:
        model(torch.randn(16, 8))
        reg.loss(step=0)
        model.in_place = True
        model(torch.randn(16, 8))
        with pytest.raises(RuntimeError, match=r"'linear' was modified in place.*inplace=False"):
            reg.loss(step=1)


def test_dropout_in_place_only_in_training_mode_is_caught():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5, inplace=True), nn.Linear(16, 3))
    x = torch.randn(32, 8)
    with SIGRegulariser(model, layers=["0"]) as reg:
        model.eval()
        model(x)
        reg.loss(step=0)
        model.train()  # dropout now writes zeros into the Linear's output
        model(x)
        torch.testing.assert_close(reg.pooled()["0"], model[0](x))


# ------------------------------------------------------------------------------------------------
# item 12: a module called several times per forward
# ------------------------------------------------------------------------------------------------
class _Shared(nn.Module):
    """One block applied three times (weight sharing across depth, as ALBERT or a universal transformer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.tanh(self.block(x))
        return self.head(x)


@pytest.mark.parametrize("mode", ["weak", "strong"])
def test_a_module_called_several_times_is_regularised_on_every_call(mode):
    model = _Shared()
    returned = _output_of(model.block)
    x = torch.randn(32, 8)
    with SIGRegulariser(model, mode=mode, layers=["block"], sketch_dim=4) as reg:
        model(x)
        model(x)  # a second forward replaces the first one's states: 3 calls, not 6
        loss = reg.loss(step=7)
    assert list(reg.layer_losses) == ["block", "block[1]", "block[2]"]
    calls = returned[-3:]
    statistic = sigreg_weak if mode == "weak" else sigreg_strong
    size = {"sketch_dim": 4} if mode == "weak" else {"num_slices": 4}
    want = [statistic(h, generator=step_generator(0, 7, i), **size) for i, h in enumerate(calls)]
    torch.testing.assert_close(loss, torch.stack(want).mean())
    (got_grad,) = torch.autograd.grad(loss, model.block.weight, retain_graph=True)
    (want_grad,) = torch.autograd.grad(torch.stack(want).mean(), model.block.weight)
    torch.testing.assert_close(got_grad, want_grad)
    with reg:  # forward entered without the model's hooks (as through a PEFT wrapper): loss() used the states up
        for step in range(2):
            model.forward(x)
            reg.loss(step=step)
            assert list(reg.layer_losses) == ["block", "block[1]", "block[2]"]


# ------------------------------------------------------------------------------------------------
# item 13: hierarchical backbones get each stage's output at every size
# ------------------------------------------------------------------------------------------------
def _transformers_model(family: str, deep: bool) -> nn.Module:
    d = 2 if deep else 1
    stages = {"depths": [1, d, 1, 1], "hidden_sizes": [8, 16, 24, 32], "num_labels": 3}
    build = {
        "convnext": lambda: tf.ConvNextForImageClassification(tf.ConvNextConfig(**stages)),
        "convnextv2": lambda: tf.ConvNextV2ForImageClassification(tf.ConvNextV2Config(**stages)),
        "regnet": lambda: tf.RegNetForImageClassification(tf.RegNetConfig(embedding_size=8, groups_width=8, **stages)),
        "poolformer": lambda: tf.PoolFormerModel(tf.PoolFormerConfig(**stages)),
        "swin": lambda: tf.SwinForImageClassification(tf.SwinConfig(
            image_size=32, patch_size=4, embed_dim=8, depths=[1, 2 * d, 1], num_heads=[1, 1, 1], window_size=2,
            num_labels=3)),  # fmt: skip
        "swinv2": lambda: tf.Swinv2ForImageClassification(tf.Swinv2Config(
            image_size=32, patch_size=4, embed_dim=8, depths=[1, 2 * d, 1], num_heads=[1, 1, 1], window_size=2,
            num_labels=3)),  # fmt: skip
        "mobilenet_v1": lambda: tf.MobileNetV1ForImageClassification(
            tf.MobileNetV1Config(depth_multiplier=0.25 * d, image_size=32, num_labels=3)),  # fmt: skip
        "mobilenet_v2": lambda: tf.MobileNetV2ForImageClassification(
            tf.MobileNetV2Config(depth_multiplier=0.25 * d, image_size=32, num_labels=3)),  # fmt: skip
        "efficientnet": lambda: tf.EfficientNetForImageClassification(tf.EfficientNetConfig(
            width_coefficient=0.1, depth_coefficient=0.2 * d, hidden_dim=128, image_size=32, num_labels=3)),
    }  # fmt: skip
    torch.manual_seed(0)
    return build[family]()


# each stage's output: the names at the small and the deep size, and the pooled widths
TRANSFORMERS_STAGES = {
    "convnext": ([f"convnext.encoder.stages.{i}" for i in range(4)],) * 2 + ([8, 16, 24, 32],),
    "convnextv2": ([f"convnextv2.encoder.stages.{i}" for i in range(4)],) * 2 + ([8, 16, 24, 32],),
    "regnet": ([f"regnet.encoder.stages.{i}" for i in range(4)],) * 2 + ([8, 16, 24, 32],),
    # a ModuleList per stage (never called itself): its last block
    "poolformer": (
        ["encoder.block.0.0", "encoder.block.1.0", "encoder.block.2.0", "encoder.block.3.0"],
        ["encoder.block.0.0", "encoder.block.1.1", "encoder.block.2.0", "encoder.block.3.0"],
        [8, 16, 24, 32],
    ),
    # the last block before each stage's patch merging
    "swin": (
        ["swin.encoder.layers.0.blocks.0", "swin.encoder.layers.1.blocks.1", "swin.encoder.layers.2.blocks.0"],
        ["swin.encoder.layers.0.blocks.0", "swin.encoder.layers.1.blocks.3", "swin.encoder.layers.2.blocks.0"],
        [8, 16, 32],
    ),
    "swinv2": (
        ["swinv2.encoder.layers.0.blocks.0", "swinv2.encoder.layers.1.blocks.1", "swinv2.encoder.layers.2.blocks.0"],
        ["swinv2.encoder.layers.0.blocks.0", "swinv2.encoder.layers.1.blocks.3", "swinv2.encoder.layers.2.blocks.0"],
        [8, 16, 32],
    ),
    # flat block lists: the last block before each stride-2 block, and the last one
    "mobilenet_v1": ([f"mobilenet_v1.layer.{i}" for i in (1, 5, 9, 21, 25)],) * 2 + ([16, 32, 64, 128, 256],),
    "mobilenet_v2": ([f"mobilenet_v2.layer.{i}" for i in (1, 4, 11, 15)],) * 2 + ([8, 8, 24, 80],),
    "efficientnet": (
        [f"efficientnet.encoder.blocks.{i}" for i in (0, 1, 2, 4, 6)],
        [f"efficientnet.encoder.blocks.{i}" for i in (0, 1, 2, 6, 9)],
        [8, 8, 8, 16, 32],
    ),
}


@pytest.mark.parametrize("family", list(TRANSFORMERS_STAGES))
def test_transformers_hierarchical_backbones_are_tapped_at_each_stage(family):
    small_names, deep_names, widths = TRANSFORMERS_STAGES[family]
    for deep, names in ((True, deep_names), (False, small_names)):
        model = _transformers_model(family, deep).eval()
        reg = SIGRegulariser(model, sketch_dim=4)
        assert reg.layer_names == names and reg.pooling == "mean"
        assert reg.describe()["taps_source"] == f"transformers:{family}"
    with reg, torch.no_grad():  # the small one
        model(pixel_values=torch.randn(4, 3, 32, 32))
        pooled = reg.pooled()
        assert torch.isfinite(reg.loss(step=0))
    assert [tuple(v.shape) for v in pooled.values()] == [(4, w) for w in widths]


TIMM_STAGES = {
    "convnext": ("convnext_atto", {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}, [f"stages.{i}" for i in range(4)]),
    "swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 32, "window_size": 2, "embed_dim": 8, "depths": (1, 2, 1), "num_heads": (1, 1, 1)},
             [f"layers.{i}" for i in range(3)]),
    "regnet": ("regnetx_002", {}, ["s1", "s2", "s3", "s4"]),
    "mobilenetv3": ("mobilenetv3_small_050", {}, ["blocks.0", "blocks.1", "blocks.3", "blocks.5"]),
    "efficientnet": ("efficientnet_b0", {}, ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]),
    "poolformer": (None, {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}, [f"stages.{i}" for i in range(4)]),
}  # fmt: skip


@pytest.mark.parametrize("family", list(TIMM_STAGES))
def test_timm_hierarchical_backbones_are_tapped_at_each_stage(family):
    arch, kwargs, names = TIMM_STAGES[family]
    torch.manual_seed(0)
    if arch is None:  # timm's PoolFormer class with tiny stages (its registered names fix depths and dims)
        model = MetaFormer(norm_layers=GroupNorm1, num_classes=3, **kwargs).eval()
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=3, **kwargs).eval()
    reg = SIGRegulariser(model, sketch_dim=4)
    assert reg.layer_names == names and reg.pooling == "mean"
    returned = {name: _output_of(module) for name, module in model.named_modules() if name in names}
    with reg, torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
        pooled = reg.pooled()
    widths = [info["num_chs"] for info in model.feature_info if info["module"] in names]
    assert [tuple(v.shape) for v in pooled.values()] == [(4, w) for w in widths]
    for name in names:  # global average pool over the spatial positions (timm's Swin is channels-last)
        out = returned[name][-1]
        spatial = (1, 2) if family == "swin" else (2, 3)
        torch.testing.assert_close(pooled[name], out.mean(dim=spatial))
    assert reg.describe()["feature_layout"] == ("NHWC" if family == "swin" else "NCHW")


def test_timm_wrapper_and_deeper_timm_model_get_the_same_stage_taps():
    config = tf.TimmWrapperConfig(architecture="convnext_atto", num_labels=3,
                                  model_args={"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)})  # fmt: skip
    wrapped = tf.TimmWrapperForImageClassification(config)
    assert SIGRegulariser(wrapped).layer_names == [f"timm_model.stages.{i}" for i in range(4)]
    deeper = timm.create_model("convnext_atto", depths=(2, 2, 4, 2), dims=(8, 16, 24, 32), num_classes=3)
    assert SIGRegulariser(deeper).layer_names == [f"stages.{i}" for i in range(4)]


def test_describe_names_the_taps_pooling_and_mode():
    model = _transformers_model("convnext", deep=False)
    info = SIGRegulariser(model, mode="strong", sketch_dim=16, seed=3).describe()
    assert info == {
        "mode": "strong",
        "layers": [f"convnext.encoder.stages.{i}" for i in range(4)],
        "patterns": [r"(?:convnext\.)?encoder\.stages\.\d+"],
        "taps_source": "transformers:convnext",
        "pooling": "mean",
        "feature_layout": "NCHW",
        "mask_padding": True,
        "sketch_dim": 16,
        "sketch_type": "gaussian",
        "seed": 3,
        "num_points": 17,
        "t_max": 5.0,
    }
    json.dumps(info)
    user = SIGRegulariser(model, layers=[r"convnext\.encoder\.stages\.3"], pooling="flatten").describe()
    assert user["taps_source"] == "sigreg_layers" and user["pooling"] == "flatten" and "t_max" not in user


# ------------------------------------------------------------------------------------------------
# item 5: a micro-batch too small for the statistic
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["weak", "strong"])
def test_a_batch_of_one_contributes_no_regulariser_and_warns_once(mode, caplog):
    model = _mlp(inplace=False)
    reg = SIGRegulariser(model, mode=mode, sketch_dim=4)
    with caplog.at_level(logging.WARNING, logger="sigreg_hf.taps"), reg:
        for step in range(2):
            model.zero_grad()
            model(torch.randn(1, 8))
            loss = reg.loss(step=step)
            assert loss.item() == 0.0 and loss.dtype == torch.float32 and loss.requires_grad
            loss.backward()  # connected to the graph: gradients are zeros, not missing
            assert all(p.grad is not None and not p.grad.any() for p in model[0].parameters())
        model(torch.randn(5, 8))
        assert reg.loss(step=2).item() > 0
    assert reg.num_skipped_batches == 2 and reg.layer_losses
    warnings = [r for r in caplog.records if "too small" in r.getMessage()]
    assert len(warnings) == 1 and "it needs N >= 2" in warnings[0].getMessage()


def test_trainer_runs_through_last_batches_of_one(tmp_path):
    """9 training rows in batches of 4 and 5 evaluation rows: the last batch of each has one sample."""
    from sigreg_test_models import training_args

    args = training_args(tmp_path, max_steps=-1, num_train_epochs=1, per_device_train_batch_size=4,
                         per_device_eval_batch_size=4, sigreg_mode="strong", sigreg_alpha=0.1)  # fmt: skip
    trainer = SIGRegTrainer(model=FAMILIES["mlp"].model(), args=args, train_dataset=image_data(9),
                            eval_dataset=image_data(5, seed=1), compute_loss_func=soft_target_loss)  # fmt: skip
    trainer.train()
    history = trainer.state.log_history
    total, task, reg = losses(history), losses(history, "task_loss"), losses(history, "sigreg_loss")
    assert len(total) == 3 and len(reg) == 2 and reg[0] > 0 and reg[1] > 0  # the batch of one: no sigreg_loss
    assert total[2] == pytest.approx(0.9 * task[2], rel=1e-6)  # the batch of one trained on its task loss
    train_logs = [entry for entry in history if "loss" in entry and "eval_loss" not in entry]
    assert [entry.get("sigreg_skipped_batches") for entry in train_logs] == [None, None, 1.0]
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_sigreg_skipped_batches"] == 1.0
    assert trainer.regulariser.num_skipped_batches == 2  # the last training batch and the last evaluation batch


def test_metrics_decided_on_the_device_leave_skipped_batches_out():
    """Under DDP the trainer gets the skip decision as a device tensor and weights its metrics with it."""
    from sigreg_hf.trainer import _reduce_metric

    nan, one, zero = torch.tensor(float("nan")), torch.tensor(1.0), torch.tensor(0.0)
    assert _reduce_metric([(torch.tensor(2.0), one), (nan, zero), (4.0, 1.0)]) == 3.0  # weight 0: even NaN is out
    assert _reduce_metric([(nan, zero)]) is None  # nothing counted: no metric
    assert math.isnan(_reduce_metric([(nan, one), (torch.tensor(1.0), one)]))  # a diverged statistic shows
    # logging_nan_inf_filter (the Trainer's default, as for its own loss): non-finite values left out while finite
    # ones remain (an evaluation batch without a target token has a NaN task loss), shown when all are non-finite
    assert _reduce_metric([(nan, one), (torch.tensor(1.0), one)], nan_inf_filter=True) == 1.0
    assert math.isnan(_reduce_metric([(nan, one), (nan, 1.0)], nan_inf_filter=True))
    assert _reduce_metric([(one, 1.0), (zero, 1.0), (one, 1.0)], total=True) == 2.0  # skipped batches: a count
    assert _reduce_metric([(zero, 1.0)], total=True) is None


def test_flattened_tokens_of_a_single_sequence_are_enough():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))
    with SIGRegulariser(model, layers=["1"], pooling="flatten", sketch_dim=4) as reg:
        model(torch.randint(0, 10, (1, 6)))  # one sequence, six token samples
        assert reg.loss(step=0).item() > 0
    assert reg.num_skipped_batches == 0


def test_the_functional_losses_stay_strict():
    for loss in (sigreg_weak, sigreg_strong):
        with pytest.raises(ValueError, match="at least N = 2"):
            loss(torch.randn(1, 4))


@pytest.mark.distributed
def test_ranks_with_zero_or_one_rows_decide_from_the_global_batch(tmp_path):
    ranks = torchrun_ranks("distributed_small_batch_worker.py", tmp_path)
    model = small_worker.make_model()
    for index, split in enumerate(small_worker.SPLITS):
        x = small_worker.rows(split, index)
        skipped = sum(sum(s) < 2 for s in small_worker.SPLITS[: index + 1])  # so far, in each regulariser
        for mode, check_finite in [(mode, check) for mode in ("weak", "strong") for check in (True, False)]:
            got = [r["regulariser"][index][(mode, check_finite)] for r in ranks]
            assert all(r["counted"] == (sum(split) >= 2) for r in got)
            if sum(split) < 2:
                for r in got:
                    assert r["loss"].item() == 0.0 and r["requires_grad"]
                    assert all(not g.any() for g in r["grads"])  # zeros, not NaN: the statistics stay finite
            else:
                reg = SIGRegulariser(model, mode=mode, layers=["0"], sketch_dim=8)
                model.zero_grad()
                with reg:
                    model(x)
                    want = reg.loss(step=index)
                want.backward()
                for r in got:
                    torch.testing.assert_close(r["loss"], want.detach(), rtol=1e-5, atol=1e-6)
                # each rank holds world_size x its rows' share of the gradient (DDP averages it back)
                for p, g0, g1 in zip(model[0].parameters(), got[0]["grads"], got[1]["grads"], strict=True):
                    torch.testing.assert_close((g0 + g1) / 2, p.grad, rtol=1e-4, atol=1e-6)
            assert all(r["skipped"] == skipped for r in got)
    for r in ranks:  # once per regulariser, whether the count was read on the host or kept on the device
        assert len(r["warnings"]) == 4, r["warnings"]
        assert sum("with fewer than 2 samples in a tapped state, over all ranks" in w for w in r["warnings"]) == 2
    # the functional losses use the global N under torch.distributed: a rank may hold a single row
    pair = torch.randn(2, small_worker.FEATURES, generator=torch.Generator().manual_seed(3))
    for name, loss in (("weak", sigreg_weak), ("strong", sigreg_strong)):
        want = loss(pair, generator=torch.Generator().manual_seed(4))
        for r in ranks:
            torch.testing.assert_close(r["functional"][((1, 1), name)], want, rtol=1e-5, atol=1e-6)
            assert "over all ranks (its rows in sample_mask, where given) has N = 1" in r["functional"][((1, 0), name)]


def test_trainer_logs_and_describes_its_taps_when_training_starts(tmp_path, caplog):
    from sigreg_test_models import training_args

    args = training_args(tmp_path, max_steps=1, per_device_train_batch_size=4, sigreg_mode="weak")
    trainer = SIGRegTrainer(model=FAMILIES["mlp"].model(), args=args, train_dataset=image_data(8),
                            compute_loss_func=soft_target_loss)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="sigreg_hf.trainer"):
        trainer.train()
    described = trainer.regulariser.describe()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SIGReg taps: ")]
    assert logged == [f"SIGReg taps: {described}"]
    assert described["mode"] == "weak" and described["layers"] and "pooling" in described
