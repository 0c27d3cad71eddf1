"""Optimisers (SGD, AdamW, Muon+AdamW as one optimizer), schedules, and Muon checkpoint/resume in the Trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from sigreg_hf.experiments.optim import (
    OptimizerFactory,
    build_lr_scheduler,
    build_optimizer,
    split_muon_parameters,
    updates_per_epoch,
)
from sigreg_hf.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_sgd_and_adamw_hyperparameters() -> None:
    model = create_model("mlp", num_classes=10, image_size=8, hidden_size=16)
    sgd = build_optimizer(model, name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    assert isinstance(sgd, torch.optim.SGD) and len(sgd.param_groups) == 1
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 0.9, 5e-4, False)
    plain = build_optimizer(model, name="sgd", learning_rate=0.1, momentum=0.0)
    assert plain.param_groups[0]["momentum"] == 0.0 and plain.param_groups[0]["weight_decay"] == 0.0
    adamw = build_optimizer(model, name="adamw", learning_rate=1e-3, weight_decay=0.05, no_decay_bias_norm=True)
    assert isinstance(adamw, torch.optim.AdamW)
    assert sorted(g["weight_decay"] for g in adamw.param_groups) == [0.0, 0.05]
    assert all(p.ndim == 1 for p in adamw.param_groups[1]["params"])
    with pytest.raises(ValueError, match="Unknown optimizer 'lion'"):
        build_optimizer(model, name="lion", learning_rate=1e-3)


@pytest.mark.parametrize("name", ["vit_rope", "vit_peak"])
def test_muon_is_one_optimizer_with_paper_groups(name: str) -> None:
    from timm.optim import Muon

    model = create_model(name, num_classes=100)
    opt = build_optimizer(
        model, name="muon", learning_rate=1e-2, weight_decay=5e-4, muon_params="all_2d", aux_learning_rate=1e-3
    )
    assert isinstance(opt, Muon) and isinstance(opt, torch.optim.Optimizer)
    muon_group, adam_group = opt.param_groups
    assert muon_group["use_muon"] and muon_group["lr"] == 1e-2 and muon_group["weight_decay"] == 5e-4
    assert adam_group["use_fallback"] and adam_group["lr"] == 1e-3 and tuple(adam_group["betas"]) == (0.9, 0.95)
    assert all(p.ndim == 2 for p in muon_group["params"])
    assert all(p.ndim != 2 for p in adam_group["params"])
    n_params = sum(1 for _ in model.parameters())
    assert len(muon_group["params"]) + len(adam_group["params"]) == n_params
    # "all_2d" puts the head on Muon (the paper); "hidden" keeps head and embeddings on AdamW
    muon_all, _ = split_muon_parameters(model, rule="all_2d")
    muon_hidden, rest_hidden = split_muon_parameters(model, rule="hidden")
    assert "head.weight" in dict(muon_all) and "head.weight" in dict(rest_hidden)
    assert all(n.startswith("blocks.") for n, _ in muon_hidden)
    assert {n for n, _ in rest_hidden if _.ndim >= 2} >= {"head.weight", "patch_embed.proj.weight"}


def test_muon_hidden_rule_on_resnet_keeps_stem_and_head_out() -> None:
    model = create_model("resnet18_cifar", num_classes=10)
    muon, rest = split_muon_parameters(model, rule="hidden")
    names = dict(muon)
    assert "conv1.weight" not in names and "layer1.0.conv1.weight" in names
    assert all(p.ndim < 2 or n.startswith(("conv1", "head", "fc")) for n, p in rest)


def _toy_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 3, 8, 8, generator=g)
    w = torch.randn(3 * 8 * 8, 4, generator=g)
    return x, (x.flatten(1) @ w).argmax(1)


def test_muon_trains_a_small_model() -> None:
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=4, image_size=8, hidden_size=64, num_hidden_layers=2)
    opt = build_optimizer(model, name="muon", learning_rate=0.02, aux_learning_rate=1e-3, muon_params="hidden")
    assert len(opt.param_groups[0]["params"]) == 2  # the two hidden matrices
    x, y = _toy_problem()
    losses = []
    for step in range(60):
        idx = torch.arange(step * 32, step * 32 + 32) % 256
        loss = model(pixel_values=x[idx], labels=y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5, losses


class _Dataset(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y = _toy_problem(1)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def _trainer(out: Path, max_steps: int, save_steps: int) -> Trainer:
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=4, image_size=8, hidden_size=32, num_hidden_layers=2)
    opt = build_optimizer(model, name="muon", learning_rate=0.02, weight_decay=0.01, aux_learning_rate=1e-3)
    sched = build_lr_scheduler(opt, schedule="cosine", total_steps=max_steps, steps_per_epoch=2, eta_min=1e-4)
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8, save_strategy="steps",
        save_steps=save_steps, logging_steps=1, report_to="none", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0,
    )
    return Trainer(model=model, args=args, train_dataset=_Dataset(), optimizers=(opt, sched))


def test_muon_checkpoint_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full", max_steps=6, save_steps=100)
    full.train()
    interrupted = _trainer(tmp_path / "part", max_steps=6, save_steps=3)
    interrupted.train()  # writes checkpoint-3 (and checkpoint-6)
    state = torch.load(tmp_path / "part" / "checkpoint-3" / "optimizer.pt", weights_only=False)
    assert len(state["param_groups"]) == 2 and any("momentum_buffer" in s for s in state["state"].values())
    resumed = _trainer(tmp_path / "resumed", max_steps=6, save_steps=100)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert resumed.lr_scheduler.get_last_lr() == full.lr_scheduler.get_last_lr()
    assert resumed.state.global_step == 6


def test_optimizer_factory_hook(tmp_path: Path) -> None:
    model = create_model("mlp", num_classes=4, image_size=8, hidden_size=16, num_hidden_layers=2)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(
        model=model, args=args, train_dataset=_Dataset(),
        optimizer_cls_and_kwargs=(OptimizerFactory, {"name": "muon", "learning_rate": 0.02}),
    )
    trainer.train()
    from timm.optim import Muon

    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    assert isinstance(inner, Muon)


@pytest.mark.parametrize("eta_min", [0.0, 1e-5])
def test_cosine_per_epoch_matches_cosine_annealing_per_group(eta_min: float) -> None:
    model = create_model("mlp", num_classes=4, image_size=8, hidden_size=16, num_hidden_layers=2)
    opt = build_optimizer(model, name="muon", learning_rate=1e-2, aux_learning_rate=1e-3)
    steps_per_epoch, epochs = 3, 5
    sched = build_lr_scheduler(
        opt, schedule="cosine", total_steps=steps_per_epoch * epochs, steps_per_epoch=steps_per_epoch, eta_min=eta_min
    )
    ref_model = nn.Linear(2, 2)
    ref_opt = torch.optim.SGD([{"params": [ref_model.weight], "lr": 1e-2}, {"params": [ref_model.bias], "lr": 1e-3}])
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs, eta_min=eta_min)
    for _epoch in range(epochs):
        for _ in range(steps_per_epoch):
            assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in ref_opt.param_groups])
            opt.step()
            sched.step()
        ref_opt.step()
        ref.step()


def test_per_step_constant_and_warmup() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, schedule="cosine", total_steps=10, steps_per_epoch=5, interval="step", eta_min=0.01)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)]
    assert lrs == pytest.approx(expected)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, schedule="constant", total_steps=10, steps_per_epoch=5, warmup_steps=4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="Unknown lr schedule"):
        build_lr_scheduler(opt, schedule="linear", total_steps=10, steps_per_epoch=5)


def test_updates_per_epoch_counts_like_the_trainer() -> None:
    assert updates_per_epoch(50000, per_device_batch_size=128) == 391
    assert updates_per_epoch(50000, per_device_batch_size=128, drop_last=True) == 390
    assert updates_per_epoch(50000, per_device_batch_size=128, world_size=8) == 49
    assert updates_per_epoch(100, per_device_batch_size=8, gradient_accumulation_steps=4) == 4


@pytest.mark.parametrize("recipe", ["vit_muon_none", "vit_muon_mix_weak", "vitpeak_muon_mix_strong"])
def test_muon_recipes_give_the_auxiliary_adam_eps_1e_minus_10(recipe: str, tmp_path: Path) -> None:
    """reference-recipes.md: Adam(W) on the non-Muon parameters with eps 1e-10 (the reference Muon package's)."""
    from sigreg_hf.experiments.cli_train import parse_args

    args, _, _, optim_args, _ = parse_args(["--recipe", recipe, "--output_dir", str(tmp_path)])
    model = create_model("vit_peak" if recipe.startswith("vitpeak") else "vit_rope", num_classes=10,
                         num_hidden_layers=1)  # fmt: skip
    muon_group, adam_group = build_optimizer(model, **optim_args.optimizer_options(args)).param_groups
    assert adam_group["use_fallback"] and adam_group["eps"] == 1e-10
    assert tuple(adam_group["betas"]) == (0.9, 0.95) and adam_group["lr"] == 1e-3
    assert muon_group["use_muon"] and muon_group["lr"] == 1e-2
    # the library and command-line default stays AdamW's usual 1e-8
    default = build_optimizer(model, name="muon", learning_rate=1e-2, muon_params="all_2d").param_groups[1]
    assert default["eps"] == 1e-8
