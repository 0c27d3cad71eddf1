"""``sigreg-hf quickstart``: the paper's plain deep MLP without, with weak and with strong SIGReg, side by side.

By default it needs no network and little time: scikit-learn's handwritten digits (1,797 8x8 grey images,
10 classes, shipped inside scikit-learn) are split into a stratified, seeded train/test split, written as a
``datasets`` folder (``save_to_disk``) and trained through the project's own training command line
(:mod:`sigreg_hf.experiments.cli_train`: the ``mlp_sgd_{none,weak,strong}`` recipes, ``SIGRegTrainer``, the same data
pipeline as CIFAR). Only the dataset-specific settings are overridden: 8x8 inputs, no crop padding or
flips (digits are not mirror-symmetric), mean/std computed from the training split, and a short schedule.

With ``--dataset uoft-cs/cifar100`` (or any dataset the loader accepts: a Hub id, a parquet or
``save_to_disk`` folder, an ``imagefolder`` tree) the same command runs the three recipes unchanged at full
scale (400 epochs each unless ``--epochs`` says otherwise).

Outputs (``--output_dir``, default ``outputs/quickstart``): one run directory per variant (``none``,
``weak``, ``strong``: checkpoint, ``results.json``, ``log_history.csv``, plots, model card), and at the top
``results_table.md`` / ``.csv``, overlay plots and ``README.md`` - a model card (with ``model-index``) for the
weak-SIGReg model that includes the three-way comparison.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sigreg_hf.experiments import cli_train
from sigreg_hf.experiments.card import build_model_card, write_model_card
from sigreg_hf.experiments.collect import collect_results
from sigreg_hf.experiments.data.digits import (
    DIGITS,
    DIGITS_NAMES,
    DIGITS_PRETTY_NAME,
    DIGITS_TEST_FRACTION,
    digits_dataset,
)
from sigreg_hf.experiments.recipes import load_recipe

__all__ = [
    "DIGITS",
    "DIGITS_NAMES",
    "VARIANTS",
    "QuickstartResult",
    "digits_dataset",
    "run_quickstart",
]

DEFAULT_OUTPUT_DIR = "outputs/quickstart"
#: (run name, recipe) in the order they are trained and shown.
VARIANTS: tuple[tuple[str, str], ...] = (
    ("none", "mlp_sgd_none"),
    ("weak", "mlp_sgd_weak"),
    ("strong", "mlp_sgd_strong"),
)
#: Epochs on the digits: about 20-25 s per run on 2 idle CPU cores. By epoch 40 the runs have separated by a few
#: points in two seeds (strong > weak > none in final and best top-1); the baseline's curve is the noisiest.
DIGITS_EPOCHS = 40


@dataclass
class QuickstartResult:
    """What :func:`run_quickstart` produced."""

    output_dir: Path
    runs: list[dict[str, Any]]
    table_markdown: str
    card_path: Path
    seconds: float


def _train_args(
    recipe: str,
    run_dir: Path,
    *,
    dataset: str,
    epochs: float | None,
    seed: int,
    digits: bool,
    extra: Sequence[str],
) -> list[str]:
    argv = ["--recipe", recipe, "--output_dir", str(run_dir), "--dataset_name", dataset, "--seed", str(seed)]
    if epochs is not None:
        argv += ["--num_train_epochs", f"{epochs:g}"]
    if digits:
        argv += [
            "--image_size", "8", "--crop_padding", "0", "--hflip", "false", "--mean_std", "dataset",
            "--dataloader_num_workers", "0", "--logging_strategy", "epoch", "--save_strategy", "no",
        ]  # fmt: skip
    return argv + list(extra)


def run_quickstart(
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    *,
    dataset: str = DIGITS,
    epochs: float | None = None,
    seed: int = 0,
    train_subset: int | None = None,
    variants: Sequence[str] = ("none", "weak", "strong"),
    extra_args: Sequence[str] = (),
    keep_checkpoints: bool = False,
    echo: Any = print,
) -> QuickstartResult:
    """Train the MLP without / with weak / with strong SIGReg and write the comparison (see the module doc).

    Args:
        output_dir: where everything goes (one sub-folder per variant).
        dataset: ``"digits"`` (default, offline) or any dataset the training CLI accepts.
        epochs: epochs per run (default: 40 on the digits, the recipes' 400 otherwise).
        seed: seed of the data split, the initialisation and the SIGReg projections.
        train_subset: digits: keep a stratified subset of N training images; other datasets: passed as
            ``--train_subset``.
        variants: which of ``none``, ``weak``, ``strong`` to run.
        extra_args: further ``scripts/train.py`` arguments for every run (e.g. ``["--max_steps", "2"]``).
        keep_checkpoints: keep the intermediate ``checkpoint-*`` folders (digits runs).
        echo: where progress lines go (``print``).
    """
    start = time.time()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    chosen = [(name, recipe) for name, recipe in VARIANTS if name in variants]
    if not chosen:
        raise ValueError(f"variants must name some of {[n for n, _ in VARIANTS]}; got {list(variants)!r}.")
    digits = dataset in DIGITS_NAMES
    extra = list(extra_args)
    if digits:
        data_path = digits_dataset(output_dir / "_data" / "digits", seed=seed, train_subset=train_subset)
        dataset_arg = str(data_path)
        epochs = DIGITS_EPOCHS if epochs is None else epochs
        echo(f"[quickstart] scikit-learn digits: stratified {1 - DIGITS_TEST_FRACTION:.0%}/{DIGITS_TEST_FRACTION:.0%} "
             f"train/test split (seed {seed}) written to {data_path}")  # fmt: skip
    else:
        dataset_arg = dataset
        if train_subset is not None:
            extra += ["--train_subset", str(train_subset)]
    threads = _digits_threads() if digits else None
    try:
        runs = _train_variants(chosen, output_dir, dataset_arg, epochs, seed, digits, train_subset, extra,
                               keep_checkpoints, echo)  # fmt: skip
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
    runs, table = collect_results([output_dir / name for name, _ in chosen], output_dir)
    card_run = next((name for name, _ in chosen if name == "weak"), chosen[0][0])
    card = build_model_card(
        output_dir / card_run,
        repo_id=f"sigreg-quickstart-mlp-{card_run}",
        comparison_markdown=table,
        comparison_plots=["overlay_accuracy.png", "overlay_loss.png"],
        extra_limits=_limits(digits),
        plot_prefix=f"{card_run}/",
    )
    top_card = output_dir / "README.md"
    card.save(top_card)
    seconds = time.time() - start
    echo("")
    echo(f"[quickstart] {_dataset_title(digits, dataset)}, MLP, {epochs if epochs is not None else 'recipe'} epochs, "
         f"seed {seed}: test accuracy (%)")  # fmt: skip
    echo(table)
    if digits:
        echo("[quickstart] The seed published CIFAR-100 numbers only (400 epochs), so the published column is empty "
             "for the digits; run with --dataset uoft-cs/cifar100 for the comparable full-scale runs.")  # fmt: skip
    echo(f"[quickstart] done in {seconds:.0f} s. Outputs in {output_dir}: results_table.md, overlay_*.png, "
         f"README.md (model card), and one run folder per variant.")  # fmt: skip
    return QuickstartResult(output_dir=output_dir, runs=runs, table_markdown=table, card_path=top_card, seconds=seconds)


def _digits_threads() -> int | None:
    """Train the digits runs on one CPU thread (unless OMP_NUM_THREADS says otherwise); return the old count.

    8x8 inputs make tiny matrix products: one thread is nearly as fast as two on an idle machine and far
    faster on a busy one, where spinning OpenMP workers slowed these runs down 5-10x in our measurements.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous


def _train_variants(
    chosen: Sequence[tuple[str, str]],
    output_dir: Path,
    dataset_arg: str,
    epochs: float | None,
    seed: int,
    digits: bool,
    train_subset: int | None,
    extra: Sequence[str],
    keep_checkpoints: bool,
    echo: Any,
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for i, (name, recipe) in enumerate(chosen, start=1):
        run_dir = output_dir / name
        argv = _train_args(recipe, run_dir, dataset=dataset_arg, epochs=epochs, seed=seed, digits=digits, extra=extra)
        command = "python scripts/train.py " + " ".join(argv)
        labels = None
        if digits:
            split = {"test_fraction": DIGITS_TEST_FRACTION, "seed": seed, "train_subset": train_subset}
            labels = _digits_labels(recipe, dataset_arg, split)
            command = (f"sigreg-hf quickstart --seed {seed}" + (f" --epochs {epochs:g}" if epochs else "")
                       + f"\n# this run alone:\n{command}")  # fmt: skip
        echo(f"[quickstart] ({i}/{len(chosen)}) {recipe}: SIGReg {name} -> {run_dir}")
        record = cli_train.main(argv, command=command, labels=labels)
        if record is None:  # only for --list_recipes
            raise RuntimeError(f"the training CLI returned no results for {recipe}.")
        if not keep_checkpoints and digits:
            for ckpt in run_dir.glob("checkpoint-*"):
                shutil.rmtree(ckpt, ignore_errors=True)
        write_model_card(run_dir, repo_id=f"sigreg-quickstart-mlp-{name}", results=record,
                         extra_limits=_limits(digits))  # fmt: skip
        runs.append({**record.to_dict(), "run_dir": str(run_dir)})
    return runs


def _dataset_title(digits: bool, dataset: str) -> str:
    return "scikit-learn digits" if digits else dataset


def _digits_labels(recipe: str, dataset_path: str, split: dict[str, Any]) -> dict[str, Any]:
    """How the digits runs are recorded: a portable dataset name and the split that
    :func:`sigreg_hf.experiments.evaluate.evaluate_checkpoint` rebuilds; the recipes' published numbers are
    CIFAR-100 at 400 epochs, no reference for the digits."""
    return {
        "dataset": "sklearn-digits",
        "dataset_path": dataset_path,
        "dataset_pretty_name": DIGITS_PRETTY_NAME,
        "digits_split": split,
        "published_top1": None,
        "published_top1_cifar100": load_recipe(recipe).get("published_top1"),
    }


def _limits(digits: bool) -> str:
    if not digits:
        return ""
    return (
        "- Trained on scikit-learn's 8x8 handwritten digits by `sigreg-hf quickstart`: a smoke-scale demonstration "
        "of the pipeline and of the three objectives, not evidence about CIFAR-100. The seed's published number "
        "in the table is CIFAR-100 at 400 epochs and is not comparable."
    )
