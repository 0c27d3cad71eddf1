"""scripts/train.py end to end: argument precedence, every recipe for 2 steps, saved artefacts, launchers."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig
from transformers import AutoImageProcessor, AutoModelForImageClassification

import sigreg_hf.models  # noqa: F401  (registers the Auto classes)
from sigreg_hf.config import SIGRegConfig
from sigreg_hf.experiments.cli_train import main, parse_args
from sigreg_hf.experiments.image_trainer import ImageClassificationTrainer
from sigreg_hf.experiments.recipes import PUBLISHED_TOP1, load_recipe
from sigreg_hf.models import create_model
from sigreg_hf.soft_targets import soft_target_cross_entropy, soft_target_loss

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR10_TARBALL = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"  # ../shared/data beside the clone

TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"
SMALL = [
    "--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
    "--dataloader_num_workers", "0", "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
    "--write_plots", "false",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}


def test_recipe_values_are_defaults_and_cli_wins(tmp_path: Path) -> None:
    args, model_args, data_args, optim_args, run_args = parse_args(
        ["--recipe", "vitpeak_muon_mix_weak", "--output_dir", str(tmp_path), "--learning_rate", "0.02",
         "--sigreg_mode", "strong", "--sigreg_alpha", "0.01", "--train_subset", "500", "--mix", "false"]
    )  # fmt: skip
    recipe = load_recipe("vitpeak_muon_mix_weak")
    assert args.learning_rate == 0.02 and args.sigreg_mode == "strong" and args.sigreg_alpha == 0.01
    assert args.weight_decay == recipe["weight_decay"] == 0.05 and args.max_grad_norm == 1.0
    assert args.num_train_epochs == 400 and args.per_device_train_batch_size == 128
    assert model_args.model_name == "vit_peak" and optim_args.optimizer == "muon" and optim_args.eta_min == 1e-5
    assert data_args.mix is False and data_args.train_subset == 500 and data_args.mean_std == "cifar100_peak"
    assert run_args.published_top1 == 76.24 and run_args.recipe == "vitpeak_muon_mix_weak"
    assert args.eval_strategy == "epoch" and args.remove_unused_columns is False
    default_out = parse_args(["--recipe", "mlp_sgd_none"])[0].output_dir
    assert default_out == os.path.join("runs", "mlp_sgd_none")


def test_list_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list_recipes"]) is None
    out = capsys.readouterr().out
    assert "27 recipes" in out and all(name in out for name in PUBLISHED_TOP1)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("recipe", sorted(PUBLISHED_TOP1))
def test_every_recipe_trains_two_steps(recipe: str, synthetic_cifar100: Path, tmp_path: Path) -> None:
    out = tmp_path / recipe
    results = main(["--recipe", recipe, "--dataset_name", str(synthetic_cifar100), "--output_dir", str(out),
                    *SMALL]).to_dict()
    assert results["global_step"] == 2 and results["recipe"] == recipe
    assert results["final_top1"] is not None and 0.0 <= results["final_top1"] <= 100.0
    assert results["num_classes"] == 100 and results["train_images"] == 64
    log = results["last_train_log"]
    assert log["loss"] == log["loss"]  # finite, not NaN
    recipe_cfg = load_recipe(recipe)
    assert ("train_top1_vs_dominant_label" in log) is recipe_cfg["mix"]
    if recipe_cfg["sigreg_mode"] != "none":
        assert log["sigreg_alpha"] == recipe_cfg["sigreg_alpha"] and "sigreg_loss" in log
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["final_top1"] == results["final_top1"] and on_disk["published_top1"] == PUBLISHED_TOP1[recipe]
    model = AutoModelForImageClassification.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    assert model.config.num_labels == 100
    mean = {"cifar100_peak": 0.4867, "cifar100_full": 0.48654887331495095}[recipe_cfg["mean_std"]]
    assert processor.image_mean[1] == mean and processor.size["height"] == 32
    assert results["task_loss_scale"] == recipe_cfg.get("task_loss_scale", 1.0)
    if recipe_cfg["model_name"] == "vit_rope":
        assert (model.config.rope_variant, model.config.rope_temperature) == ("reference", 10000.0)
    if recipe_cfg["model_name"] == "vit_peak":
        assert model.config.init_scheme == "reference"


def _trainer(tmp_path: Path, *, task_loss_scale: float, sigreg_mode: str = "none") -> ImageClassificationTrainer:
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=5, image_size=8, hidden_size=16, num_hidden_layers=2)
    args = SIGRegConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", sigreg_mode=sigreg_mode,
                        sigreg_alpha=0.1)  # fmt: skip
    return ImageClassificationTrainer(model=model, args=args, task_loss_scale=task_loss_scale,
                                      compute_loss_func=soft_target_loss)  # fmt: skip


@pytest.mark.parametrize("soft", [False, True], ids=["hard_labels", "mixed_targets"])
def test_task_loss_scale_trains_the_reference_baselines_objective(soft: bool, tmp_path: Path) -> None:
    """(1 - a) * CE with a = 0.1 (the reference's baselines): the training loss and its gradient are 0.9 x the
    plain cross-entropy's; evaluation reports the plain cross-entropy."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=gen)
    y = torch.randint(0, 5, (6,), generator=gen)
    labels = torch.nn.functional.one_hot(y, 5).float() * 0.7 + 0.06 if soft else y
    losses, grads = {}, {}
    for scale in (1.0, 0.9):
        trainer = _trainer(tmp_path, task_loss_scale=scale)
        model = trainer.model.train()
        loss = trainer.compute_loss(model, {"pixel_values": x, "labels": labels})
        loss.backward()
        losses[scale], grads[scale] = loss.detach(), model.head.weight.grad.clone()
        model.eval()
        with torch.no_grad():
            eval_loss = trainer.compute_loss(model, {"pixel_values": x, "labels": labels})
        torch.testing.assert_close(eval_loss, losses[1.0])
    logits = trainer.model(pixel_values=x).logits
    plain = soft_target_cross_entropy(logits, labels) if soft else torch.nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(losses[1.0], plain.detach())
    torch.testing.assert_close(losses[0.9], 0.9 * losses[1.0])
    torch.testing.assert_close(grads[0.9], 0.9 * grads[1.0])


def test_task_loss_scale_is_for_baselines_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task_loss_scale=0.9 applies to sigreg_mode 'none' only.*--task_loss_scale 1"):
        _trainer(tmp_path, task_loss_scale=0.9, sigreg_mode="weak")
    with pytest.raises(ValueError, match="task_loss_scale must be a positive finite number, got 0.0"):
        _trainer(tmp_path, task_loss_scale=0.0)


def test_train_script_subprocess_on_imagefolder_with_subset(tmp_path: Path) -> None:
    """The script itself, on an imagefolder tree, with --train_subset and a CIFAR-10 mean/std."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("cat", "dog", "frog"):
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / c / f"{i}.png"
                )
    out = tmp_path / "run"
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--recipe", "mlp_sgd_weak", "--dataset_name", str(tmp_path / "tree"),
           "--mean_std", "cifar10", "--train_subset", "9", "--output_dir", str(out), *SMALL,
           "--write_plots", "true"]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[sigreg_hf] mlp_sgd_weak: final top-1" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["num_classes"] == 3 and results["train_images"] == 9 and results["eval_images"] == 6
    # the recipe's published number is CIFAR-100's: never compared with a 3-class run
    assert results["published_top1"] is None and "published" not in proc.stdout.split("final top-1")[1].split("|")[0]
    assert AutoModelForImageClassification.from_pretrained(out).config.num_labels == 3
    assert (out / "accuracy_curves.png").exists() and (out / "log_history.csv").exists()


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_configs_parse(path: Path) -> None:
    config = ClusterConfig.from_yaml_file(str(path))
    expected = {
        "single_gpu": ("NO", 1), "multi_gpu": ("MULTI_GPU", 8), "multi_node": ("MULTI_GPU", 16),
        "fsdp": ("FSDP", 8), "deepspeed_zero2": ("DEEPSPEED", 8), "cpu_2proc": ("MULTI_GPU", 2),
    }[path.stem]  # fmt: skip
    assert (str(config.distributed_type).split(".")[-1], config.num_processes) == expected
    assert str(config.mixed_precision) in ("no", "PrecisionType.NO")


def test_all_accelerate_configs_present() -> None:
    names = {p.stem for p in (REPO_ROOT / "accelerate_configs").glob("*.yaml")}
    assert names == {"single_gpu", "multi_gpu", "multi_node", "fsdp", "deepspeed_zero2", "cpu_2proc"}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_process_cpu_ddp_run(launcher: str, synthetic_cifar100: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    script_args = ["--recipe", "vit_muon_mix_weak", "--dataset_name", str(synthetic_cifar100),
                   "--output_dir", str(out), *SMALL]  # fmt: skip
    bin_dir = Path(sys.executable).parent
    if launcher == "accelerate":
        cmd = [str(bin_dir / "accelerate"), "launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu_2proc.yaml"), str(TRAIN_SCRIPT), *script_args]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(TRAIN_SCRIPT), *script_args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == 2
    assert results["steps_per_epoch"] == 8  # 64 images / (4 per device x 2 processes)
    assert proc.stdout.count("[sigreg_hf] vit_muon_mix_weak") == 1  # only the main process prints


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_resnet_run_syncs_batchnorm(synthetic_cifar100: Path, tmp_path: Path) -> None:
    """--sync_batchnorm auto: a BatchNorm model under 2-process DDP (gloo) normalises over the global batch."""
    out = tmp_path / "ddp_bn"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(REPO_ROOT / "accelerate_configs" / "cpu_2proc.yaml"), str(TRAIN_SCRIPT),
           "--recipe", "resnet18_sgd_mix_weak", "--dataset_name", str(synthetic_cifar100), "--output_dir", str(out),
           "--model_overrides", '{"stem_width": 8, "widths": [8, 8, 16, 16]}', *SMALL]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["speed_options"]["sync_batchnorm"] is True
    assert "BatchNorm statistics over the global batch of 2 processes" in proc.stderr
    reloaded = AutoModelForImageClassification.from_pretrained(out)  # saved as plain BatchNorm layers
    assert any(type(m) is torch.nn.BatchNorm2d for m in reloaded.modules())


@pytest.mark.slow
def test_mlp_recipe_learns_real_cifar10(tmp_path: Path) -> None:
    """Short MLP run on the genuine CIFAR-10 (../shared/data): test accuracy well above chance (10%)."""
    if not CIFAR10_TARBALL.exists():
        pytest.skip(f"real CIFAR-10 not available at {CIFAR10_TARBALL}")
    with tarfile.open(CIFAR10_TARBALL) as tar:
        tar.extractall(tmp_path / "cifar10", filter="data")
    torch.set_num_threads(1)
    results = main(
        ["--recipe", "mlp_sgd_none", "--dataset_name", str(tmp_path / "cifar10"), "--mean_std", "cifar10",
         "--train_subset", "10000", "--max_eval_samples", "2000", "--num_train_epochs", "2",
         "--output_dir", str(tmp_path / "run"), "--dataloader_num_workers", "0", "--save_strategy", "no",
         "--disable_tqdm", "true", "--dataset_cache_dir", str(tmp_path / "hf_cache")]
    ).to_dict()  # fmt: skip
    assert results["num_classes"] == 10 and results["train_images"] == 10000
    assert len(results["test_top1_by_epoch"]) == 2
    assert results["final_top1"] > 20.0, results["test_top1_by_epoch"]  # chance is 10%; seen: 26.5%


def test_reproduce_dry_run_prints_all_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from sigreg_hf.experiments.cli_reproduce import main as reproduce

    assert reproduce(["--dry_run", "--output_root", "out"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 27 and all("-m sigreg_hf.experiments.cli_train --recipe" in line for line in lines)
    assert reproduce(["--dry_run", "--recipes", "vitpeak_*", "--launcher", "torchrun", "--nproc", "8",
                      "--", "--max_steps", "2"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all("--nproc_per_node 8" in line and line.endswith("--max_steps 2") for line in lines)
    with pytest.raises(ValueError, match="No recipe matches"):
        reproduce(["--dry_run", "--recipes", "resnet50_*"])


def test_reproduce_runs_and_collects(synthetic_cifar100: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "reproduce.py"), "--recipes", "mlp_sgd_none", "mlp_sgd_weak",
           "--output_root", str(tmp_path / "repro"), "--no_plots", "--", "--dataset_name", str(synthetic_cifar100),
           *SMALL]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for recipe in ("mlp_sgd_none", "mlp_sgd_weak"):
        assert (tmp_path / "repro" / recipe / "results.json").exists()
    table = (tmp_path / "repro" / "results_table.md").read_text()
    assert "mlp_sgd_none" in table and "mlp_sgd_weak" in table


def test_offline_hub_dataset_is_a_fast_clean_error(tmp_path: Path) -> None:
    env = {**_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--recipe", "mlp_sgd_none", "--output_dir", str(tmp_path / "o"), *SMALL]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "error: Cannot load dataset 'uoft-cs/cifar100'" in proc.stderr and "Traceback" not in proc.stderr
    assert "HF_DATASETS_OFFLINE" in proc.stderr and "imagefolder" in proc.stderr


@pytest.mark.usefixtures("single_thread")
def test_schedule_counts_steps_like_the_trainer(synthetic_cifar100: Path, tmp_path: Path) -> None:
    """One epoch with gradient accumulation: our steps/epoch (used by the per-epoch cosine) equals the Trainer's."""
    small = list(SMALL)
    small[small.index("--max_steps") + 1] = "-1"
    results = main(["--recipe", "mlp_sgd_none", "--dataset_name", str(synthetic_cifar100), "--output_dir",
                    str(tmp_path / "o"), *small, "--num_train_epochs", "1", "--gradient_accumulation_steps", "3",
                    "--save_final_model", "false"]).to_dict()  # fmt: skip
    assert results["steps_per_epoch"] == 6  # 16 batches of 4, accumulated by 3 -> 5 + 1
    assert results["global_step"] == 6 and len(results["test_top1_by_epoch"]) == 1


def test_the_trainer_builds_the_recipes_optimizer_and_schedule_in_its_own_hooks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """create_optimizer / create_scheduler: the one path under DDP, FSDP (after sharding) and DeepSpeed."""
    class CifarSized(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 50000  # 391 steps of 128 per epoch

        def __getitem__(self, index: int) -> dict:
            raise AssertionError("not read")

    def vit() -> torch.nn.Module:
        return create_model("vit_peak", num_classes=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)

    args, _, _, optim_args, _ = parse_args(["--recipe", "vitpeak_muon_mix_weak", "--output_dir", str(tmp_path),
                                            "--eval_strategy", "no"])  # fmt: skip
    trainer = ImageClassificationTrainer(model=vit(), args=args, train_dataset=CifarSized(), optim_args=optim_args)
    trainer.create_optimizer_and_scheduler(num_training_steps=156400)  # what train() calls: 400 epochs of 391
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-3] and optimizer.param_groups[1]["eps"] == 1e-10
    for _ in range(391):  # one epoch: the per-epoch cosine keeps the lr constant, then steps once
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 + (1e-2 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 400)))
    # FSDP: the Trainer builds the optimiser after sharding, from the prepared model it passes in
    sharded = vit()
    trainer.optimizer, trainer.is_fsdp_enabled = None, True
    with caplog.at_level(logging.WARNING, logger="sigreg_hf.experiments.image_trainer"):
        built = trainer.create_optimizer(sharded)
    params = {id(p) for group in built.param_groups for p in group["params"]}
    assert params == {id(p) for p in sharded.parameters()} and "Muon under FSDP/DeepSpeed" in caplog.text


def test_results_json_has_the_issue6_summary_fields(synthetic_cifar100: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    main(["--recipe", "mlp_sgd_weak", "--dataset_name", str(synthetic_cifar100), "--output_dir", str(out), *SMALL,
          "--save_final_model", "false"])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    for key in ("recipe", "sigreg_mode", "seed", "train_images", "epochs", "test_top1_by_epoch", "final_top1",
                "best_top1", "wall_seconds", "images_per_second", "published_top1", "evaluations"):  # fmt: skip
        assert key in results, key
    assert results["sigreg_mode"] == "weak" and results["seed"] == 0 and results["train_images"] == 64
