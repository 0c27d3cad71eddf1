"""`sigreg-hf quickstart` in a reduced form: three real runs through the training CLI, table, plots, card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

from sigreg_hf.experiments.cli import main
from sigreg_hf.experiments.data.digits import digits_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_digits_split_is_stratified_seeded_and_goes_through_the_project_loader(tmp_path):
    import datasets

    from sigreg_hf.experiments.data import load_image_classification_dataset

    path = digits_dataset(tmp_path / "d", seed=1)
    raw = load_image_classification_dataset(str(path))
    assert (raw.image_column, raw.label_column, raw.num_classes) == ("image", "label", 10)
    assert isinstance(raw.train.features["image"], datasets.Image)
    assert len(raw.train) + len(raw.eval) == 1797 and abs(len(raw.train) - len(raw.eval)) <= 1
    counts = np.bincount(raw.train["label"], minlength=10)
    assert counts.min() >= 85 and counts.max() <= 95  # stratified: ~90 per class
    assert raw.train[0]["image"].size == (8, 8)
    again = digits_dataset(tmp_path / "e", seed=1)
    assert datasets.load_from_disk(str(again))["test"]["label"] == raw.eval["label"]
    other = digits_dataset(tmp_path / "f", seed=2)
    assert datasets.load_from_disk(str(other))["test"]["label"] != raw.eval["label"]


def test_quickstart_reduced_runs_three_ways_and_writes_table_plots_card(tmp_path, capsys, monkeypatch):
    out = tmp_path / "qs"
    assert main(["quickstart", "--output_dir", str(out), "--epochs", "2", "--train_subset", "300"]) == 0
    printed = capsys.readouterr().out
    assert "[quickstart] (1/3) mlp_sgd_none" in printed and "(3/3) mlp_sgd_strong" in printed
    table = (out / "results_table.md").read_text()
    assert table in printed  # the three-way table is printed
    rows = [line for line in table.splitlines() if line.startswith("| ") and "mlp_sgd_" in line]
    assert [r.split("|")[2].strip() for r in rows] == ["mlp_sgd_none", "mlp_sgd_weak", "mlp_sgd_strong"]
    assert "weak (a=0.1)" in table and "strong (a=0.01)" in table
    for name in ("overlay_accuracy.png", "overlay_loss.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    for variant, mode in (("none", "none"), ("weak", "weak"), ("strong", "strong")):
        run = out / variant
        results = json.loads((run / "results.json").read_text())
        assert results["sigreg_mode"] == mode and results["dataset"] == "sklearn-digits"
        assert results["train_images"] == 300 and len(results["test_top1_by_epoch"]) == 2
        assert results["command"].startswith("sigreg-hf quickstart")
        # labelled by the quickstart through the record (not rewritten): a portable name, no CIFAR-100 reference
        assert results["published_top1"] is None and results["published_top1_cifar100"] is not None
        assert Path(results["dataset_path"]).is_dir() and results["digits_split"]["seed"] == 0
        for name in ("model.safetensors", "config.json", "preprocessor_config.json", "loss_curves.png",
                     "accuracy_curves.png", "log_history.csv", "README.md"):  # fmt: skip
            assert (run / name).is_file(), (variant, name)
        assert not list(run.glob("checkpoint-*"))
    card = ModelCard.load(out / "README.md")
    assert card.data.model_name == "sigreg-quickstart-mlp-weak"
    (top1,) = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    weak = json.loads((out / "weak" / "results.json").read_text())
    assert top1.metric_value == pytest.approx(weak["final_top1"], abs=1e-3) and top1.dataset_split == "test"
    text = card.text
    assert "(overlay_accuracy.png)" in text and "(weak/loss_curves.png)" in text and "mlp_sgd_strong" in text
    for linked in ("overlay_accuracy.png", "weak/loss_curves.png", "weak/accuracy_curves.png"):
        assert (out / linked).is_file()
    # the checkpoint re-evaluates to its recorded accuracy on the same digits split, rebuilt from scikit-learn
    import huggingface_hub.constants

    from sigreg_hf.experiments.evaluate import evaluate_checkpoint

    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(tmp_path / "hf_home"))
    again = evaluate_checkpoint(str(out / "weak"))
    assert again["dataset"] == "sklearn-digits" and again["num_images"] == weak["eval_images"]
    assert again["top1"] == pytest.approx(weak["final_top1"], abs=1e-3)


def test_quickstart_unknown_dataset_fails_fast_with_a_clear_error(tmp_path):
    from sigreg_hf.experiments.data import DatasetUnavailableError

    with pytest.raises((DatasetUnavailableError, ValueError)):
        main(["quickstart", "--output_dir", str(tmp_path), "--dataset", str(tmp_path / "nowhere"), "--epochs", "1",
              "--variants", "none"])  # fmt: skip


def test_console_script_is_declared_and_answers_help():
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "sigreg-hf"]
    assert entry.value == "sigreg_hf.experiments.cli:main"
    proc = subprocess.run([sys.executable, "-m", "sigreg_hf.experiments.cli", "quickstart", "--help"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0 and "--output_dir" in proc.stdout and "--dataset" in proc.stdout


def test_quickstart_on_another_dataset_runs_the_recipes_unchanged(tmp_path, capsys):
    """--dataset PATH: the CIFAR-schema parquet folder goes through the mlp_sgd_* recipes at 32x32 (1 epoch)."""
    from sigreg_hf.experiments.data import write_synthetic_cifar100

    data = write_synthetic_cifar100(tmp_path / "cifar_like", num_train=256, num_test=100, num_classes=100)
    out = tmp_path / "qs"
    code = main(["quickstart", "--output_dir", str(out), "--dataset", str(data), "--epochs", "1",
                 "--variants", "none", "weak", "--", "--dataloader_num_workers", "0", "--save_strategy", "no",
                 "--per_device_eval_batch_size", "100"])  # fmt: skip
    assert code == 0
    table = (out / "results_table.md").read_text()
    assert "| 26.77 |" in table and "| 42.17 |" in table  # the recipes' published CIFAR-100 numbers
    assert "mlp_sgd_strong" not in table
    config = json.loads((out / "weak" / "config.json").read_text())
    assert config["image_size"] == 32 and len(config["id2label"]) == 100
    results = json.loads((out / "weak" / "results.json").read_text())
    assert results["dataset"] == str(data) and results["sigreg_mode"] == "weak" and results["epochs"] == 1
    assert "--dataloader_num_workers 0" in results["command"]
    assert ModelCard.load(out / "README.md").data.eval_results
