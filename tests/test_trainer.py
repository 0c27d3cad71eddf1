"""SIGRegTrainer on real (small, randomly initialised) transformers / timm / plain-torch models, offline."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from sigreg_test_models import FAMILIES, freeze_batchnorm, image_data, losses, training_args
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from sigreg_hf.config import SIGRegConfig
from sigreg_hf.soft_targets import soft_target_cross_entropy, soft_target_loss
from sigreg_hf.trainer import SIGRegTrainer

ALL = list(FAMILIES)


def _plain_args(args: SIGRegConfig) -> TrainingArguments:
    fields = TrainingArguments.__dataclass_fields__
    kept = {k: v for k, v in args.to_dict().items() if k in fields and fields[k].init}
    return TrainingArguments(**kept)


class GradCatcher(TrainerCallback):
    """Copies every parameter's gradient just before each optimiser step."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


class HookCounter(TrainerCallback):
    def __init__(self) -> None:
        self.max_hooks = 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.max_hooks = max(self.max_hooks, sum(len(m._forward_hooks) for m in model.modules()))


# ------------------------------------------------------------------------------------------------
# every model family: auto taps, training reduces the loss, logs follow the weighting rule
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ALL)
def test_auto_taps_and_training_reduces_loss(family, tmp_path):
    fam = FAMILIES[family]
    mode = "strong" if family in ("vit", "resnet") else "weak"
    alpha = 0.01 if mode == "strong" else 0.1
    model = fam.model()
    trainer = SIGRegTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=6, sigreg_mode=mode, sigreg_alpha=alpha),
        train_dataset=fam.data(16),
        **fam.trainer_kwargs,
    )
    assert trainer.regulariser.layer_names == fam.taps
    trainer.train()
    history = trainer.state.log_history
    total, task, reg = losses(history), losses(history, "task_loss"), losses(history, "sigreg_loss")
    assert len(total) == len(task) == len(reg) == 6
    assert total[-1] < total[0] and task[-1] < task[0], (total, task)
    for t, r, logged in zip(task, reg, total, strict=True):
        assert math.isfinite(r) and r > 0
        assert logged == pytest.approx((1 - alpha) * t + alpha * r, rel=1e-5)
    assert all(entry["sigreg_alpha"] == alpha for entry in history if "sigreg_alpha" in entry)
    # hooks were removed after every step
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


# ------------------------------------------------------------------------------------------------
# gradient accumulation: 4 micro-batches of 8 == one batch of 32
# ------------------------------------------------------------------------------------------------
def _accumulated_run(
    family: str, tmp_path, batch: int, accumulation: int, trainer_cls=SIGRegTrainer, fix_resnet=True, **extra
):
    fam = FAMILIES[family]
    model = fam.model()
    if fam.has_batchnorm:
        freeze_batchnorm(model)
    if family in ("resnet", "bert") and fix_resnet:
        # transformers' ResNet / BERT classification heads take **kwargs but ignore num_items_in_batch (the plain
        # Trainer's loss is then 4x too large under 4 accumulation steps): the model attribute tells the Trainer
        model.accepts_loss_kwargs = False
    args = training_args(
        tmp_path / f"b{batch}x{accumulation}",
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        optim="sgd",
        learning_rate=0.1,
        sigreg_alpha=0.6,
        sigreg_warmup_steps=2,
        **extra,
    )
    if trainer_cls is Trainer:
        args = _plain_args(args)
    catcher = GradCatcher()
    trainer = trainer_cls(
        model=model, args=args, train_dataset=fam.data(64), callbacks=[catcher], **fam.trainer_kwargs
    )
    trainer.train()
    return trainer.state.log_history, catcher.grads


@pytest.mark.parametrize("family", ALL)
def test_gradient_accumulation_matches_one_big_batch(family, tmp_path):
    big_logs, big_grads = _accumulated_run(family, tmp_path, batch=32, accumulation=1)
    acc_logs, acc_grads = _accumulated_run(family, tmp_path, batch=8, accumulation=4)
    # step 0: effective alpha is 0 (warm-up), so the gradient is the task gradient
    assert [e["sigreg_alpha"] for e in acc_logs if "sigreg_alpha" in e] == [0.0, 0.3]
    for name, grad in big_grads[0].items():
        torch.testing.assert_close(acc_grads[0][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the logged task loss is the big batch's task loss (at step 1 after the same update too)
    task_big, task_acc = losses(big_logs, "task_loss"), losses(acc_logs, "task_loss")
    assert task_acc == pytest.approx(task_big, rel=1e-5)
    assert losses(acc_logs)[0] == pytest.approx(task_big[0], rel=1e-5)
    # the logged loss keeps the weighting rule: (1 - a) * task + a * reg with a = 0.3 at step 1
    for logs in (big_logs, acc_logs):
        step1 = [e for e in logs if e.get("step") == 2 and "loss" in e][0]
        assert step1["loss"] == pytest.approx(0.7 * step1["task_loss"] + 0.3 * step1["sigreg_loss"], rel=1e-5)


@pytest.mark.slow
def test_mode_none_keeps_the_parents_resnet_scaling_and_its_fix(tmp_path):
    """Mode none is the parent: transformers' ResNet (num_items_in_batch ignored) is 4x too large under accumulation
    in both, and the model's ``accepts_loss_kwargs = False`` fixes both alike."""
    big_logs, _ = _accumulated_run("resnet", tmp_path, batch=32, accumulation=1, sigreg_mode="none")
    for fix in (False, True):
        plain_logs, _ = _accumulated_run(
            "resnet", tmp_path / str(fix), batch=8, accumulation=4, trainer_cls=Trainer, fix_resnet=fix
        )
        ours_logs, _ = _accumulated_run(
            "resnet", tmp_path / str(fix), batch=8, accumulation=4, sigreg_mode="none", fix_resnet=fix
        )
        assert losses(ours_logs) == losses(plain_logs)
        assert losses(plain_logs)[0] == pytest.approx((1 if fix else 4) * losses(big_logs)[0], rel=1e-4)


# ------------------------------------------------------------------------------------------------
# sigreg_mode="none" is the plain Trainer
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "resnet", "bert", "timm"])
def test_mode_none_is_exactly_the_plain_trainer(family, tmp_path):
    fam = FAMILIES[family]
    results = []
    for cls in (Trainer, SIGRegTrainer):
        model = fam.model()
        args = training_args(tmp_path / cls.__name__, max_steps=3, sigreg_mode="none")
        counter = HookCounter()
        trainer = cls(
            model=model,
            args=_plain_args(args) if cls is Trainer else args,
            train_dataset=fam.data(16),
            callbacks=[counter],
        )
        trainer.train()
        results.append((losses(trainer.state.log_history), list(model.parameters()), counter.max_hooks, trainer))
    (plain_loss, plain_params, _, _), (ours_loss, ours_params, hooks, ours) = results
    assert ours_loss == plain_loss
    assert all(torch.equal(a, b) for a, b in zip(plain_params, ours_params, strict=True))
    assert hooks == 0 and ours.regulariser is None
    assert not any("sigreg_loss" in e for e in ours.state.log_history)


# ------------------------------------------------------------------------------------------------
# soft targets, weighting options, per-layer and eval logs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["none", "weak"])
def test_soft_targets_use_soft_cross_entropy(mode, tmp_path):
    fam = FAMILIES["vit"]
    model = fam.model()
    data = image_data(16, soft=True)
    batch = {k: torch.stack([data[i][k] for i in range(16)]) for k in data[0]}
    with torch.no_grad():
        expected = soft_target_cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
        # what the model's own loss would do with float labels (on a copy: it sets config.problem_type)
        bce = copy.deepcopy(model)(**batch).loss
    assert abs(bce.item() - expected.item()) > 0.5
    trainer = SIGRegTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=1, sigreg_mode=mode),
        train_dataset=data,
        compute_loss_func=soft_target_loss,
    )
    trainer.train()
    key = "task_loss" if mode == "weak" else "loss"
    assert losses(trainer.state.log_history, key)[0] == pytest.approx(expected.item(), rel=1e-5)


def test_additive_weighting_warmup_and_per_layer_logs(tmp_path):
    fam = FAMILIES["mlp"]
    trainer = SIGRegTrainer(
        model=fam.model(),
        args=training_args(
            tmp_path,
            max_steps=4,
            sigreg_weighting="additive",
            sigreg_alpha=2.0,
            sigreg_warmup_steps=4,
            sigreg_log_per_layer=True,
        ),
        train_dataset=fam.data(16),
        **fam.trainer_kwargs,
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "task_loss" in e]
    assert [e["sigreg_alpha"] for e in logs] == [0.0, 0.5, 1.0, 1.5]
    for e in logs:
        assert e["loss"] == pytest.approx(e["task_loss"] + e["sigreg_alpha"] * e["sigreg_loss"], rel=1e-5)
        per_layer = [e[f"sigreg_loss/{name}"] for name in fam.taps]
        assert e["sigreg_loss"] == pytest.approx(sum(per_layer) / len(per_layer), rel=1e-5)


def test_metrics_average_over_logging_steps_and_eval_is_prefixed(tmp_path):
    fam = FAMILIES["vit"]
    per_step = SIGRegTrainer(
        model=fam.model(), args=training_args(tmp_path / "a", max_steps=4), train_dataset=fam.data(32)
    )
    per_step.train()
    grouped = SIGRegTrainer(
        model=fam.model(), args=training_args(tmp_path / "b", max_steps=4, logging_steps=2), train_dataset=fam.data(32)
    )
    grouped.train()
    for key in ("loss", "task_loss", "sigreg_loss"):
        single = losses(per_step.state.log_history, key)
        pairs = losses(grouped.state.log_history, key)
        assert pairs == pytest.approx([(single[0] + single[1]) / 2, (single[2] + single[3]) / 2], rel=1e-5)
    metrics = grouped.evaluate(fam.data(16, seed=1))
    for key in ("eval_loss", "eval_task_loss", "eval_sigreg_loss", "eval_sigreg_alpha"):
        assert key in metrics and math.isfinite(metrics[key])
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_task_loss"], rel=1e-6)  # eval_loss is the task loss
    assert "task_loss" not in metrics
    named = grouped.evaluate(fam.data(16, seed=1), metric_key_prefix="test")
    assert "test_sigreg_loss" in named


# ------------------------------------------------------------------------------------------------
# resume, mixed precision
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "mode"), [("mlp", "weak"), ("resnet", "strong")])
def test_resume_from_checkpoint_continues_the_same_losses(family, mode, tmp_path):
    """Save at step 3, resume in a fresh trainer: steps 4-6 log what the uninterrupted run logged.

    (transformers 5.24's ViTForImageClassification is not used here: the Trainer's checkpoint reload leaves its
    q/k/v projections at their initial values, a transformers issue independent of SIGReg.)
    """
    fam = FAMILIES[family]
    common = dict(
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        train_sampling_strategy="random",
        sigreg_mode=mode,
        sigreg_alpha=0.5,
        per_device_train_batch_size=8,
    )
    full = SIGRegTrainer(
        model=fam.model(), args=training_args(tmp_path / "full", **common), train_dataset=fam.data(40),
        **fam.trainer_kwargs,
    )  # fmt: skip
    full.train()
    resumed = SIGRegTrainer(
        model=fam.model(seed=99), args=training_args(tmp_path / "resumed", **common), train_dataset=fam.data(40),
        **fam.trainer_kwargs,
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    for key in ("loss", "task_loss", "sigreg_loss"):
        tail = [e[key] for e in full.state.log_history if e.get("step", 0) > 3 and key in e and "train_loss" not in e]
        again = [
            e[key] for e in resumed.state.log_history if e.get("step", 0) > 3 and key in e and "train_loss" not in e
        ]
        assert len(tail) == 3 and again == pytest.approx(tail, rel=1e-6), key


@pytest.mark.parametrize("family", ["mlp", "vit"])
def test_bf16_on_cpu_keeps_statistics_float32(family, tmp_path):
    """bf16 autocast on CPU: Linear outputs (the MLP's taps) are bfloat16, the statistics float32.

    (A ViT block's output is float32 even under autocast: the residual stream adds to float32 tensors.)
    """
    fam = FAMILIES[family]
    trainer = SIGRegTrainer(
        model=fam.model(), args=training_args(tmp_path, max_steps=2, bf16=True), train_dataset=fam.data(16),
        **fam.trainer_kwargs,
    )  # fmt: skip
    seen = []
    original = trainer.regulariser.layer_loss

    def spy(x, **kw):
        value = original(x, **kw)
        seen.append((x.dtype, value.dtype))
        return value

    trainer.regulariser.layer_loss = spy
    trainer.train()
    assert seen and all(stat == torch.float32 for _, stat in seen), seen
    if family == "mlp":
        assert all(hidden == torch.bfloat16 for hidden, _ in seen), seen
    assert all(math.isfinite(v) for v in losses(trainer.state.log_history, "sigreg_loss"))


# ------------------------------------------------------------------------------------------------
# configuration and errors
# ------------------------------------------------------------------------------------------------
def test_config_parses_from_command_line_and_json(tmp_path):
    parser = HfArgumentParser(SIGRegConfig)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--sigreg_mode",
            "strong",
            "--sigreg_alpha",
            "0.01",
            "--sigreg_layers",
            r"vit\.layers\.\d+",
            "classifier",
            "--sigreg_pooling",
            "cls",
            "--sigreg_sketch_dim",
            "32",
            "--sigreg_num_points",
            "9",
            "--sigreg_t_max",
            "3",
            "--sigreg_warmup_steps",
            "10",
            "--sigreg_log_per_layer",
            "true",
            "--sigreg_weighting",
            "additive",
        ]
    )
    assert (args.sigreg_mode, args.sigreg_alpha, args.sigreg_layers) == (
        "strong",
        0.01,
        [r"vit\.layers\.\d+", "classifier"],
    )
    assert (args.sigreg_pooling, args.sigreg_sketch_dim, args.sigreg_num_points, args.sigreg_t_max) == (
        "cls",
        32,
        9,
        3.0,
    )
    assert args.sigreg_warmup_steps == 10 and args.sigreg_log_per_layer and args.sigreg_weighting == "additive"
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path), "sigreg_mode": "weak", "sigreg_layers": "auto"}))
    (from_json,) = parser.parse_json_file(str(path))
    assert from_json.sigreg_layers == ["auto"] and from_json.sigreg_mode == "weak"
    yaml_path = tmp_path / "args.yaml"
    yaml_path.write_text(f"output_dir: {tmp_path}\nsigreg_mode: weak\nsigreg_layers: ['net\\.1']\n")
    (from_yaml,) = parser.parse_yaml_file(str(yaml_path))
    assert from_yaml.sigreg_layers == [r"net\.1"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sigreg_mode": "medium"}, "sigreg_mode must be one of"),
        ({"sigreg_alpha": 1.5}, "sigreg_weighting='additive'"),
        ({"sigreg_weighting": "mult"}, "sigreg_weighting must be one of"),
        ({"sigreg_pooling": "max"}, "sigreg_pooling must be one of"),
        ({"sigreg_sketch_dim": 0}, "sigreg_sketch_dim must be an integer >= 1"),
        ({"sigreg_layers": []}, "sigreg_layers is empty"),
        ({"sigreg_layers": ["auto", "x"]}, "cannot be combined"),
    ],
)
def test_config_errors(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        SIGRegConfig(output_dir=str(tmp_path), **overrides)


def test_unmatched_pattern_fails_at_construction_listing_modules(tmp_path):
    fam = FAMILIES["vit"]
    with pytest.raises(ValueError, match=r"match no module(.|\n)*vit\.layers\.0"):
        SIGRegTrainer(
            model=fam.model(),
            args=training_args(tmp_path, sigreg_layers=[r"encoder\.block\.\d+"]),
            train_dataset=fam.data(16),
        )


def test_plain_training_arguments_mean_mode_none(tmp_path):
    fam = FAMILIES["vit"]
    args = _plain_args(training_args(tmp_path, max_steps=1))
    trainer = SIGRegTrainer(model=fam.model(), args=args, train_dataset=fam.data(16))
    assert trainer.regulariser is None
    trainer.train()


def test_model_without_labels_argument_keeps_labels_for_datasets_dataset(tmp_path):
    """A plain nn.Module taking only pixel_values, its loss a compute_loss_func: labels (in label_names) survive
    remove_unused_columns."""
    import datasets

    data = image_data(16)
    ds = datasets.Dataset.from_dict(
        {"pixel_values": data.columns["pixel_values"].numpy(), "labels": data.columns["labels"].numpy()}
    ).with_format("torch")
    model = FAMILIES["mlp"].model()
    assert isinstance(model, nn.Module)
    trainer = SIGRegTrainer(
        model=model, args=training_args(tmp_path, max_steps=2), train_dataset=ds, compute_loss_func=soft_target_loss
    )
    trainer.train()
    assert len(losses(trainer.state.log_history, "task_loss")) == 2


@pytest.mark.slow
def test_torch_compile_gives_the_same_losses_without_recompiling_each_step(tmp_path):
    """Hooks stay registered during train(), so dynamo traces them once (backend "eager": no C++ compiler)."""
    import torch._dynamo

    fam = FAMILIES["mlp"]
    eager = SIGRegTrainer(
        model=fam.model(), args=training_args(tmp_path / "eager", max_steps=4), train_dataset=fam.data(16),
        **fam.trainer_kwargs,
    )  # fmt: skip
    eager.train()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = SIGRegTrainer(
        model=fam.model(),
        args=training_args(tmp_path / "compiled", max_steps=4, torch_compile=True, torch_compile_backend="eager"),
        train_dataset=fam.data(16),
        **fam.trainer_kwargs,
    )
    compiled.train()
    for key in ("loss", "task_loss", "sigreg_loss"):
        assert losses(compiled.state.log_history, key) == pytest.approx(losses(eager.state.log_history, key), rel=1e-5)
    assert 1 <= torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    assert sum(len(m._forward_hooks) for m in compiled.model.modules()) == 0


class Leftovers(TrainerCallback):
    """Number of captured tensors still held at the end of each step (the hooks are attached then)."""

    def __init__(self, regulariser) -> None:
        self.regulariser = regulariser
        self.counts: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(len(self.regulariser.captured))


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    """Checkpointed blocks re-run in backward; the hooks record only the real forward."""
    fam = FAMILIES["vit"]
    runs = []
    for checkpointing in (False, True):
        trainer = SIGRegTrainer(
            model=fam.model(),
            args=training_args(tmp_path / str(checkpointing), max_steps=3, activation_checkpointing=checkpointing),
            train_dataset=fam.data(16),
        )
        leftovers = Leftovers(trainer.regulariser)
        trainer.add_callback(leftovers)
        trainer.train()
        assert leftovers.counts == [0, 0, 0]
        assert trainer.model.is_activation_checkpointing == checkpointing
        runs.append(trainer.state.log_history)
    for key in ("loss", "task_loss", "sigreg_loss"):
        assert losses(runs[1], key) == pytest.approx(losses(runs[0], key), rel=1e-5)


def test_evaluation_during_training_is_logged_with_prefix(tmp_path):
    fam = FAMILIES["mlp"]
    trainer = SIGRegTrainer(
        model=fam.model(),
        args=training_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, logging_steps=2),
        train_dataset=fam.data(16),
        eval_dataset=fam.data(8, seed=3),
        **fam.trainer_kwargs,
    )
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    trains = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in evals] == [2, 4] and [e["step"] for e in trains] == [2, 4]
    for e in evals:
        assert {"eval_task_loss", "eval_sigreg_loss", "eval_sigreg_alpha"} <= set(e) and "task_loss" not in e
    for e in trains:
        assert {"task_loss", "sigreg_loss"} <= set(e) and "eval_task_loss" not in e
        assert e["loss"] == pytest.approx(0.9 * e["task_loss"] + 0.1 * e["sigreg_loss"], rel=1e-5)


def test_trainer_pools_text_states_over_real_tokens(tmp_path):
    """compute_loss hands the batch's attention_mask to the regulariser: extra padding leaves the loss as is."""
    model = FAMILIES["bert"].model().train()  # dropout 0; training mode: compute_loss returns task + reg
    ids = torch.randint(1, 60, (6, 8), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(8) < torch.tensor([8, 5, 3, 8, 6, 2])[:, None]).long()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    short = {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}
    long = {"input_ids": torch.cat([ids * mask, torch.zeros(6, 4, dtype=torch.long)], 1),
            "attention_mask": torch.cat([mask, torch.zeros(6, 4, dtype=torch.long)], 1), "labels": labels}  # fmt: skip
    values = {}
    for masked in (True, False):
        trainer = SIGRegTrainer(
            model=model,
            args=training_args(tmp_path, sigreg_mode="weak", sigreg_alpha=0.5, sigreg_mask_padding=masked),
        )
        with torch.no_grad():
            values[masked] = [trainer.compute_loss(model, dict(batch)).item() for batch in (short, long)]
    assert values[True][0] == pytest.approx(values[True][1], rel=1e-4)
    assert values[False][0] != pytest.approx(values[False][1], rel=1e-2)


@pytest.mark.parametrize("mode", ["weak", "strong"])
def test_a_causal_lm_on_padded_batches_trains_without_a_host_sync(mode, tmp_path):
    """Every real token a sample (the causal-LM default) with padding: the mask goes to the losses, so the step
    has no data-dependent shape and reads nothing on the host (tests/host_sync.py records what it would)."""
    from host_sync import HostSyncRecorder, RecordSteps
    from sigreg_test_models import DictDataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (32, 8), generator=g)
    mask = (torch.arange(8) < torch.randint(2, 9, (32,), generator=g)[:, None]).long()
    data = DictDataset(input_ids=ids * mask, attention_mask=mask, labels=torch.where(mask == 1, ids, -100))
    recorder = HostSyncRecorder()
    trainer = SIGRegTrainer(model=FAMILIES["llama"].model(), args=training_args(tmp_path, sigreg_mode=mode,
                            per_device_train_batch_size=8, max_steps=4), train_dataset=data,
                            callbacks=[RecordSteps(recorder)])  # fmt: skip
    assert trainer.regulariser.pooling == "flatten"
    trainer.train()
    assert recorder.offenders == []
    assert len(losses(trainer.state.log_history, "sigreg_loss")) == 4
    # the recorder sees the selection of real tokens that a host-side decision makes
    with trainer.regulariser, HostSyncRecorder() as probe:
        trainer.model(input_ids=ids[:4], attention_mask=mask[:4])
        trainer.regulariser.pooled(attention_mask=mask[:4])
    assert probe.offenders and "_pool_real_tokens" in probe.offenders[0]


def test_evaluating_a_causal_lm_with_a_one_token_batch_keeps_its_metrics_finite(tmp_path):
    """The last evaluation batch holds one sequence of one real token: no target for the task loss (NaN, which the
    Trainer leaves out of eval_loss, and so do the SIGReg metrics) and too few samples for the statistic."""
    from sigreg_test_models import DictDataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (17, 8), generator=g)
    mask = (torch.arange(8) < torch.randint(2, 9, (17,), generator=g)[:, None]).long()
    mask[16] = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0])
    data = DictDataset(input_ids=ids * mask, attention_mask=mask, labels=torch.where(mask == 1, ids, -100))
    args = training_args(tmp_path, per_device_eval_batch_size=8, sigreg_in_eval=True)
    trainer = SIGRegTrainer(model=FAMILIES["llama"].model(), args=args, eval_dataset=data)
    metrics = trainer.evaluate()
    assert metrics["eval_sigreg_skipped_batches"] == 1.0 and trainer.regulariser.num_skipped_batches == 1
    assert all(math.isfinite(metrics[f"eval_{name}"]) for name in ("loss", "task_loss", "sigreg_loss"))


def test_lora_adapters_train_with_sigreg_on_the_base_models_layer_names(tmp_path):
    """A PEFT (LoRA) causal LM: taps use the base model's names, the regulariser's gradient reaches the adapters
    through the tapped blocks, and the frozen base weights stay as they were."""
    from peft import LoraConfig, get_peft_model

    base = FAMILIES["llama"].model()
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    args = training_args(
        tmp_path, max_steps=4, sigreg_mode="weak", sigreg_alpha=0.5, sigreg_layers=[r"model\.layers\.\d+"]
    )
    trainer = SIGRegTrainer(model=model, args=args, train_dataset=FAMILIES["llama"].data(32))
    assert trainer.regulariser.layer_names == ["model.layers.0", "model.layers.1"]
    assert trainer.regulariser.pooling == "flatten"
    trainer.train()
    assert len(losses(trainer.state.log_history, "sigreg_loss")) == 4
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n].detach(), p) for n, p in adapters.items() if "lora_B" in n)
    for name, value in base.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(value.detach(), frozen[name.replace(".base_layer", "")], rtol=0, atol=0)
    # the regulariser alone moves the adapters: its gradient flows through the LoRA-adapted blocks
    model.zero_grad()
    with trainer.regulariser:
        model(input_ids=torch.randint(0, 60, (8, 8)))
        trainer.regulariser.loss(step=0).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)
