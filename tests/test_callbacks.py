"""SIGRegMonitorCallback in a plain Trainer and in SIGRegTrainer(mode none), and its statistics."""

from __future__ import annotations

import math

import pytest
import torch
from sigreg_test_models import FAMILIES, IMAGE, TinyMLP, training_args
from test_trainer import _plain_args
from transformers import Trainer

from sigreg_hf.callbacks import SIGRegMonitorCallback, covariance_spectrum_stats
from sigreg_hf.losses import sigreg_strong, sigreg_weak
from sigreg_hf.taps import step_generator

STATS = ("strong", "weak", "effective_rank", "condition_number")


def test_spectrum_stats_tell_isotropic_from_collapsed():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 8, generator=g)
    stats = covariance_spectrum_stats(iso)
    assert stats["effective_rank"] > 7.8 and stats["condition_number"] < 1.3
    collapsed = torch.randn(4000, 1, generator=g) @ torch.randn(1, 8, generator=g)
    stats = covariance_spectrum_stats(collapsed)
    assert stats["effective_rank"] < 1.01 and stats["condition_number"] > 1e9
    two = torch.cat([torch.randn(4000, 2, generator=g), torch.zeros(4000, 6)], dim=1)
    assert covariance_spectrum_stats(two)["effective_rank"] == pytest.approx(2.0, rel=0.02)


def test_compute_matches_the_losses_and_restores_the_mode():
    model = FAMILIES["vit"].model()
    x = torch.randn(32, 3, IMAGE, IMAGE)
    monitor = SIGRegMonitorCallback(
        {"pixel_values": x, "labels": torch.zeros(32, dtype=torch.long)}, seed=4, sketch_dim=16
    )
    model.train()
    metrics = monitor.compute(model)
    assert model.training
    assert set(metrics) == {f"monitor/vit.layers.{i}/{s}" for i in range(2) for s in STATS}
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0  # no hooks stay behind
    model.eval()
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states[1].mean(dim=1)
    assert metrics["monitor/vit.layers.0/strong"] == pytest.approx(
        sigreg_strong(hidden, num_slices=16, generator=step_generator(4, 0, 0)).item(), rel=1e-5
    )
    assert metrics["monitor/vit.layers.0/weak"] == pytest.approx(
        sigreg_weak(hidden, sketch_dim=16, generator=step_generator(4, 0, 0)).item(), rel=1e-5
    )
    assert metrics["monitor/vit.layers.0/effective_rank"] == pytest.approx(
        covariance_spectrum_stats(hidden)["effective_rank"], rel=1e-6
    )
    # the same model gives the same numbers (fixed projections)
    assert monitor.compute(model) == metrics


@pytest.mark.parametrize("trainer_kind", ["plain", "sigreg_none"])
def test_logs_every_n_steps_in_any_trainer(trainer_kind, tmp_path):
    from sigreg_hf.trainer import SIGRegTrainer

    fam = FAMILIES["resnet"]
    data = fam.data(16)
    held = {"pixel_values": torch.stack([data[i]["pixel_values"] for i in range(16)])}
    monitor = SIGRegMonitorCallback(held, every_n_steps=2, sketch_dim=8)
    args = training_args(tmp_path, max_steps=4, sigreg_mode="none", logging_steps=3)
    cls, args = (Trainer, _plain_args(args)) if trainer_kind == "plain" else (SIGRegTrainer, args)
    trainer = cls(model=fam.model(), args=args, train_dataset=data, callbacks=[monitor])
    trainer.train()
    entries = [e for e in trainer.state.log_history if any(k.startswith("monitor/") for k in e)]
    assert [e["step"] for e in entries] == [2, 4]
    for entry in entries:
        assert "loss" in entry  # merged into the step's regular log entry
        for layer in fam.taps:
            for stat in STATS:
                assert math.isfinite(entry[f"monitor/{layer}/{stat}"])
    assert [h["step"] for h in monitor.history] == [2, 4]


def test_monitor_errors():
    with pytest.raises(ValueError, match="every_n_steps must be an integer >= 1"):
        SIGRegMonitorCallback({"pixel_values": torch.zeros(2, 3, IMAGE, IMAGE)}, every_n_steps=0)
    with pytest.raises(ValueError, match="batch must be a dict"):
        SIGRegMonitorCallback([1, 2, 3])
    monitor = SIGRegMonitorCallback(torch.randn(8, 3, IMAGE, IMAGE), layers=["nope"])
    with pytest.raises(ValueError, match="match no module"):
        monitor.compute(TinyMLP())


def test_monitor_ignores_padding_of_a_held_text_batch():
    """The held batch's attention_mask keeps padding out: extra pad tokens leave the diagnostics as they were."""
    model = FAMILIES["bert"].model()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (48, 8), generator=g)
    mask = (torch.arange(8) < torch.randint(2, 9, (48,), generator=g)[:, None]).long()
    pad = torch.zeros(48, 4, dtype=torch.long)
    short = SIGRegMonitorCallback({"input_ids": ids * mask, "attention_mask": mask}, sketch_dim=16).compute(model)
    long = SIGRegMonitorCallback(
        {"input_ids": torch.cat([ids * mask, pad], 1), "attention_mask": torch.cat([mask, pad], 1)}, sketch_dim=16
    ).compute(model)
    assert short.keys() == long.keys()
    for key, value in short.items():
        assert long[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
