"""The fast path (``--fast``), checked on CPU: its switches, compile without graph breaks or recompiles,
channels-last, bf16 autocast with float32 SIGReg statistics, fused optimisers, on-device augmentation and
mixing, and no host synchronisation in the project's training step."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from host_sync import HostSyncRecorder, RecordSteps  # tests/host_sync.py (tests/ is on sys.path)

import sigreg_hf.models  # noqa: F401  (registers the Auto classes)
from sigreg_hf.experiments import cli_train
from sigreg_hf.experiments.cli_train import main, parse_args
from sigreg_hf.experiments.data import DataArguments, prepare_image_classification_data
from sigreg_hf.experiments.data.transforms import ROW_COLUMN
from sigreg_hf.experiments.optim import build_optimizer
from sigreg_hf.models import create_model
from sigreg_hf.taps import SIGRegulariser

SMALL = [
    "--max_steps", "3", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--dataloader_num_workers", "0", "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
    "--write_plots", "false",
]  # fmt: skip
SMALL_RESNET = {"stem_width": 8, "widths": [8, 8, 16, 16]}
SPEED = ("bf16", "torch_compile", "channels_last", "fused_optimizer", "device_augmentation", "retain_host_memory")


def test_fast_turns_on_every_speed_option_and_the_command_line_wins(tmp_path: Path) -> None:
    base = ["--recipe", "resnet18_sgd_mix_weak", "--output_dir", str(tmp_path)]
    args, model_args, data_args, optim_args, _ = parse_args([*base, "--fast"])
    assert args.torch_compile and args.torch_compile_backend == "inductor"
    assert optim_args.fused_optimizer and data_args.device_augmentation
    assert args.dataloader_persistent_workers and args.dataloader_num_workers > 0
    assert args.bf16 and model_args.channels_last
    args, model_args, data_args, optim_args, _ = parse_args(
        [*base, "--fast", "true", "--bf16", "false", "--device_augmentation", "false", "--dataloader_num_workers", "0"]
    )
    assert not args.bf16 and not data_args.device_augmentation and args.torch_compile and optim_args.fused_optimizer
    assert not args.dataloader_persistent_workers  # no workers to keep
    args, model_args, data_args, optim_args, _ = parse_args(base)
    assert not (args.bf16 or args.torch_compile or model_args.channels_last or optim_args.fused_optimizer)
    assert not data_args.device_augmentation and model_args.sync_batchnorm == "auto"


@pytest.mark.usefixtures("single_thread")
def test_fast_path_trains_end_to_end_and_records_its_options(synthetic_cifar100: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    record = main(
        ["--recipe", "resnet18_sgd_mix_weak", "--dataset_name", str(synthetic_cifar100), "--output_dir", str(out),
         "--fast", "--torch_compile_backend", "aot_eager",
         "--model_overrides", json.dumps(SMALL_RESNET), *SMALL]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    import platform

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert results["speed_options"] == {name: True for name in SPEED} | {"sync_batchnorm": False,
                                                                        "retain_host_memory": glibc}
    losses = record.to_dict()["losses"]
    assert all(torch.isfinite(torch.tensor(losses[k])) for k in ("train_loss", "train_task_loss", "train_sigreg_loss"))
    # the saved model is a plain from_pretrained model (compile and channels-last leave no trace in it)
    from transformers import AutoModelForImageClassification

    loaded = AutoModelForImageClassification.from_pretrained(out)
    assert all(p.is_contiguous() for p in loaded.parameters())


@pytest.mark.parametrize("name", ["mlp", "resnet18_cifar", "vit_rope", "vit_peak"])
def test_compiled_model_with_sigreg_hooks_has_no_graph_break_or_recompile(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **(SMALL_RESNET if name == "resnet18_cifar" else {})).train()
    x = torch.randn(4, 3, 32, 32)
    regulariser = SIGRegulariser(model, mode="weak", check_finite=False)
    with regulariser:
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(pixel_values=x)
        assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
        regulariser.clear()
        torch.manual_seed(1)  # the Peak ViT's stochastic depth draws from torch's stream
        model(pixel_values=x)
        eager = float(regulariser.loss(step=1))
        compiled_graphs: list[int] = []

        def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
            compiled_graphs.append(1)
            return gm.forward

        torch._dynamo.reset()
        compiled = torch.compile(model, backend=counting_backend)
        values = []
        for step in range(3):  # a new sketch every step: drawn outside the graph, so no recompile
            torch.manual_seed(step)
            out = compiled(pixel_values=x)
            loss = regulariser.loss(step=step)
            (out.logits.float().sum() * 0 + loss).backward()
            values.append(float(loss))
    assert len(compiled_graphs) == 1
    assert values[1] == pytest.approx(eager, rel=1e-5)  # the hooks capture the same hidden states under compile


def test_channels_last_model_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", num_classes=10, **SMALL_RESNET).eval()
    x = torch.randn(3, 3, 32, 32)
    reference = model(pixel_values=x).logits
    model = model.to(memory_format=torch.channels_last)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    out = model(pixel_values=x.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_sigreg_statistics_stay_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = create_model("vit_peak", num_classes=10).train()
    x = torch.randn(8, 3, 32, 32)
    for mode in ("weak", "strong"):
        regulariser = SIGRegulariser(model, mode=mode, check_finite=False)
        with regulariser, torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(pixel_values=x).logits.dtype == torch.bfloat16  # the model did run in bf16
            pooled = {k: v.detach().clone() for k, v in regulariser.pooled().items()}
            loss = regulariser.loss(step=3)
        assert loss.dtype == torch.float32
        # the same bf16 hidden states, cast to float32 by hand, outside autocast
        reference = torch.stack(
            [regulariser.layer_loss(v.float(), step=3, layer_index=i) for i, v in enumerate(pooled.values())]
        ).mean()
        torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_is_fused_and_takes_the_same_step(name: str) -> None:
    torch.manual_seed(0)
    models = [create_model("mlp", num_classes=10, hidden_size=32, num_hidden_layers=2) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    optimizers = [build_optimizer(m, name=name, learning_rate=0.1, weight_decay=5e-4, fused=f)
                  for m, f in zip(models, (False, True), strict=True)]  # fmt: skip
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults.get("fused")
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y).backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # float rounding differs, not the update


@pytest.mark.usefixtures("single_thread")
def test_device_augmentation_batches_are_uint8_and_mixed_on_the_device(synthetic_cifar100: Path, tmp_path: Path):
    args, model_args, data_args, optim_args, run_args = parse_args(
        ["--recipe", "vit_adamw_mix_weak", "--dataset_name", str(synthetic_cifar100), "--output_dir", str(tmp_path),
         "--device_augmentation", "true", "--eval_strategy", "no", *SMALL]
    )  # fmt: skip
    data = prepare_image_classification_data(
        DataArguments(
            dataset_name=str(synthetic_cifar100),
            mean_std="cifar100",
            mix=True,
            randaugment_num_ops=2,
            device_augmentation=True,
        )
    )
    assert data.batch_augmentation is not None and data.mix_on_device and not data.collator.mix
    batch = data.collator([data.train[i] for i in range(8)])
    assert batch["pixel_values"].dtype == torch.uint8 and batch["labels"].dtype == torch.long
    assert batch[ROW_COLUMN] == list(range(8))  # host-side ints: moving the batch to a device leaves them
    eval_batch = data.collator([data.eval[i] for i in range(4)])
    assert eval_batch["pixel_values"].dtype == torch.float32 and ROW_COLUMN not in eval_batch

    from sigreg_hf.experiments.image_trainer import ImageClassificationTrainer

    trainer = ImageClassificationTrainer(
        model=create_model("mlp", num_classes=100, hidden_size=16, num_hidden_layers=1),
        args=args,
        batch_augmentation=data.batch_augmentation,
        device_mixer=data.collator,
        clock=data.clock,
    )
    inputs, num_items = trainer.augment_on_device(dict(batch), torch.tensor(8))
    assert ROW_COLUMN not in inputs and inputs["pixel_values"].dtype == torch.float32
    assert inputs["labels"].shape == (8, 100) and torch.allclose(inputs["labels"].sum(-1), torch.ones(8))
    assert int(num_items) == 8 * 100  # counted on class ids; scaled to soft targets as the collator path counts
    again, _ = trainer.augment_on_device(dict(batch), torch.tensor(8))  # keyed by (seed, epoch, rows): repeatable
    assert torch.equal(again["pixel_values"], inputs["pixel_values"])
    data.clock.epoch = 1
    other, _ = trainer.augment_on_device(dict(batch), torch.tensor(8))
    assert not torch.equal(other["pixel_values"], inputs["pixel_values"])


# ---------------------------------------------------------------------------------------- host syncs
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize(
    ("recipe", "extra"),
    [("mlp_sgd_mix_weak", []), ("vit_adamw_mix_strong", ["--device_augmentation", "true"]),
     ("resnet18_sgd_none", ["--model_overrides", json.dumps(SMALL_RESNET)])],
    ids=["weak-mix", "strong-device-augmentation", "baseline-task-loss-scale"],
)  # fmt: skip
def test_no_host_sync_in_the_training_step(recipe: str, extra: list[str], synthetic_cifar100: Path, tmp_path: Path):
    recorder = HostSyncRecorder()
    argv = ["--recipe", recipe, "--dataset_name", str(synthetic_cifar100), "--output_dir", str(tmp_path), *SMALL,
            "--max_steps", "4", "--logging_steps", "100", *extra]  # fmt: skip
    cli_train.run(parse_args(argv), callbacks=[RecordSteps(recorder)])
    assert recorder.offenders == []
    # the recorder would see one: the regulariser's own finiteness check reads the statistic on the host
    model = create_model("mlp", num_classes=10, hidden_size=16, num_hidden_layers=1)
    with SIGRegulariser(model, mode="weak", check_finite=True) as regulariser, HostSyncRecorder() as probe:
        model(pixel_values=torch.randn(4, 3, 32, 32))
        regulariser.loss(step=0)
    assert probe.offenders and ("taps.py" in probe.offenders[0] or "losses.py" in probe.offenders[0])


@pytest.mark.slow
@pytest.mark.distributed
def test_no_host_sync_in_the_training_step_of_two_processes(synthetic_cifar100: Path, tmp_path: Path) -> None:
    """Under DDP the regulariser's skip decision (global batch < 2) and cross-rank BatchNorm stay on the device."""
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "ddp"
    out.mkdir()
    train = ["--recipe", "resnet18_sgd_mix_weak", "--dataset_name", str(synthetic_cifar100), "--output_dir",
             str(out), "--model_overrides", json.dumps(SMALL_RESNET), "--device_augmentation", "true",
             "--sync_batchnorm", "true", *SMALL, "--max_steps", "4", "--logging_steps", "2"]  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(repo / "accelerate_configs" / "cpu_2proc.yaml"), str(Path(__file__).with_name("host_sync_worker.py")),
           str(out), *train]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(repo)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["world_size"] == 2
    for rank in (0, 1):
        assert json.loads((out / f"host_syncs_rank{rank}.json").read_text()) == []
    # the metrics kept on the device come out right: two training logs, loss = (1 - alpha) task + alpha sigreg
    with open(out / "log_history.csv", newline="") as f:
        logs = [row for row in csv.DictReader(f) if row["sigreg_loss"] and not row["eval_loss"]]
    assert len(logs) == 2 and "sigreg_skipped_batches" not in logs[0]
    for row in logs:
        alpha, task, reg = float(row["sigreg_alpha"]), float(row["task_loss"]), float(row["sigreg_loss"])
        assert reg > 0 and float(row["loss"]) == pytest.approx((1 - alpha) * task + alpha * reg, rel=1e-5)


def test_retain_freed_memory_sets_glibc_thresholds_and_is_a_no_op_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from sigreg_hf.experiments import host_memory

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert host_memory.retain_freed_memory() is True
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert host_memory.retain_freed_memory() is False


@pytest.mark.usefixtures("single_thread")
def test_device_augmentation_resumes_exactly(synthetic_cifar100: Path, tmp_path: Path) -> None:
    """Augmentation and mixing on the device are keyed by (seed, epoch, rows): a resumed run ends where the
    uninterrupted one ends (64 images / 8 = 8 steps an epoch; resumed mid-epoch 1, across the epoch boundary)."""
    import shutil

    from safetensors.torch import load_file

    def command(out: Path, *extra: str) -> list[str]:
        return ["--recipe", "mlp_sgd_mix_weak", "--dataset_name", str(synthetic_cifar100), "--output_dir", str(out),
                "--device_augmentation", "true", "--randaugment_num_ops", "2", "--max_steps", "12",
                "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0", "--save_strategy", "steps",
                "--save_steps", "6", "--eval_strategy", "no", "--disable_tqdm", "true", "--write_plots", "false",
                "--model_overrides", '{"hidden_size": 32, "num_hidden_layers": 2}', *extra]  # fmt: skip

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    main(command(whole))
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-6", resumed / "checkpoint-6")
    main(command(resumed, "--resume_from_checkpoint", "latest"))
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
