"""Issue 11, items 7 and 8: bad options and data stop the training command with one line, before training; no
option it shows in --help is silently ignored."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sigreg_hf.experiments import cli_train
from sigreg_hf.experiments.recipes import RecipeError, load_recipe


def _cli_error(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli_train.cli()
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("option", "value", "instead"),
    [("--optim", "adafactor", "--optimizer"), ("--lr_scheduler_type", "linear", "--lr_schedule"),
     ("--optim_args", "foo=1", "--optimizer"), ("--lr_scheduler_kwargs", "{}", "--eta_min")],
)  # fmt: skip
def test_options_the_command_would_ignore_are_refused(monkeypatch, tmp_path, option, value, instead):
    message = _cli_error(monkeypatch, ["--recipe", "mlp_sgd_none", "--output_dir", str(tmp_path), option, value])
    assert f"{option} is not used by this command" in message and instead in message
    message = _cli_error(monkeypatch, ["--recipe", "mlp_sgd_none", "--output_dir", str(tmp_path), f"{option}={value}"])
    assert option in message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--num_train_epochs", "0"], "--num_train_epochs must be positive"),
     (["--num_train_epochs", "-1"], "--num_train_epochs must be positive"),
     (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be a positive integer; got 0"),
     (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size must be a positive integer"),
     (["--train_subset", "0"], "--train_subset must be a positive number of images"),
     (["--train_subset", "-3"], "got -3"),
     (["--sigreg_mode", "weak", "--sigreg_alpha", "2"], "sigreg_alpha must lie in [0, 1]")],
)  # fmt: skip
def test_bad_values_are_one_line_errors(monkeypatch, tmp_path, argv, expected):
    message = _cli_error(monkeypatch, ["--recipe", "mlp_sgd_weak", "--output_dir", str(tmp_path), *argv])
    assert expected in message


def test_a_subset_larger_than_the_data_is_a_one_line_error(monkeypatch, tmp_path, synthetic_cifar100):
    message = _cli_error(monkeypatch, ["--recipe", "mlp_sgd_weak", "--output_dir", str(tmp_path / "out"),
                                       "--dataset_name", str(synthetic_cifar100), "--train_subset", "65"])  # fmt: skip
    assert "train_subset 65 exceeds the 64 examples" in message
    assert not (tmp_path / "out" / "results.json").exists()


def test_malformed_recipe_yaml_names_the_file_and_line(monkeypatch, tmp_path: Path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("model_name: mlp\noptimizer: [sgd\nlearning_rate: 0.1\n")
    with pytest.raises(RecipeError, match=r"broken\.yaml is not valid YAML \(line \d+, column \d+\)"):
        load_recipe(str(recipe))
    message = _cli_error(monkeypatch, ["--recipe", str(recipe), "--output_dir", str(tmp_path / "out")])
    assert "broken.yaml is not valid YAML" in message
