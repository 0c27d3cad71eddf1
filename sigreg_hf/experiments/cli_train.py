"""The training command line behind ``scripts/train.py``: recipe -> data -> model -> optimiser -> trainer.

``python scripts/train.py --recipe NAME [--any_field VALUE ...]``: the recipe's values are defaults,
command-line arguments win. Works as a plain process, under ``accelerate launch`` and under
``torchrun`` (the Trainer picks up the distributed environment). At the end it prints one summary
line, saves the final model and its image processor to ``output_dir`` (``from_pretrained``-loadable)
and writes the run folder (``results.json`` through :class:`~sigreg_hf.experiments.record.RunRecord`, plots,
log CSV, ``recipe.yaml``; see :func:`run`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForImageClassification,
    HfArgumentParser,
    TrainerCallback,
    ViTImageProcessor,
    set_seed,
)
from transformers.hf_argparser import string_to_bool

import sigreg_hf.models as models  # registers the sigreg-* model types with the Auto classes
from sigreg_hf.checkpoints import OutputDirectoryInUseError, resolve_resume
from sigreg_hf.config import SIGRegConfig
from sigreg_hf.experiments.data import DatasetUnavailableError, PreparedImageData, prepare_image_classification_data
from sigreg_hf.experiments.data.clock import AugmentationEpochCallback
from sigreg_hf.experiments.host_memory import retain_freed_memory
from sigreg_hf.experiments.image_trainer import ImageClassificationTrainer
from sigreg_hf.experiments.metrics import build_compute_metrics, preprocess_logits_for_metrics
from sigreg_hf.experiments.recipes import RecipeError, list_recipes, load_recipe, recipes_dir
from sigreg_hf.experiments.record import RunRecord
from sigreg_hf.experiments.run_outputs import write_run_outputs
from sigreg_hf.experiments.sync_batchnorm import CrossRankBatchNorm, convert_sync_batchnorm, should_sync_batchnorm
from sigreg_hf.experiments.train_args import DataArguments, ModelArguments, OptimArguments, RunArguments
from sigreg_hf.launch import LaunchError
from sigreg_hf.soft_targets import soft_target_loss
from sigreg_hf.trainer import SIGRegTrainer

logger = logging.getLogger("sigreg_hf.train")

#: Every recipe's published top-1 is a CIFAR-100 number; it is compared only on 100-class data.
PUBLISHED_NUM_CLASSES = 100

#: Script-level defaults (below the recipe and the command line): evaluate every epoch, keep two
#: checkpoints, keep the transform's columns, no external loggers.
BASE_DEFAULTS: dict[str, Any] = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_strategy": "steps",
    "logging_steps": 50,
    "remove_unused_columns": False,
    "report_to": "none",
    "dataloader_num_workers": 4,
    "per_device_eval_batch_size": 512,
    "ddp_find_unused_parameters": False,
}

ParsedArgs = tuple[SIGRegConfig, ModelArguments, DataArguments, OptimArguments, RunArguments]


def build_parser() -> HfArgumentParser:
    """The full parser: SIGRegConfig (TrainingArguments + sigreg_*) and the CLI dataclasses."""
    return HfArgumentParser((SIGRegConfig, ModelArguments, DataArguments, OptimArguments, RunArguments))


def parse_args(argv: Sequence[str] | None = None) -> ParsedArgs | None:
    """Parse ``argv`` with the recipe's values as defaults; ``None`` when ``--list_recipes`` was handled."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    pre.add_argument("--list_recipes", nargs="?", const=True, default=False)
    pre.add_argument("--fast", nargs="?", const="true", default="false")
    known, _ = pre.parse_known_args(argv)
    if known.list_recipes not in (False, "false", "False", "0"):
        names = list_recipes()
        print(f"{len(names)} recipes in {recipes_dir()}:")
        for name in names:
            recipe = load_recipe(name)
            print(f"  {name:28s} published top-1 {recipe.get('published_top1', float('nan')):6.2f}  "
                  f"{recipe.get('description', '')}")
        return None
    defaults = dict(BASE_DEFAULTS)
    if known.recipe:
        defaults.update(load_recipe(known.recipe))
        defaults["recipe"] = known.recipe
        defaults["output_dir"] = os.path.join("runs", Path(known.recipe).stem)
    else:
        defaults["output_dir"] = os.path.join("runs", "train")
    if string_to_bool(known.fast):
        defaults.update(FAST_PATH_DEFAULTS)
        if not torch.cuda.is_available():
            defaults["use_cpu"] = True  # TrainingArguments asks for it to autocast to bf16 without a GPU
    if not torch.cuda.is_available():
        defaults["dataloader_pin_memory"] = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # Several processes and no GPU (accelerate launch / torchrun on CPU): DDP over gloo needs use_cpu.
        defaults["use_cpu"] = True
    refuse_unhonoured_options(argv)
    parser = build_parser()
    parser.set_defaults(**defaults)
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # a field's own validation (sigreg_*, train_subset, ...): one line, no traceback
        raise UsageError(str(err)) from err
    check_sizes(parsed[0])
    args = parsed[0]
    if args.dataloader_persistent_workers and args.dataloader_num_workers == 0:
        args.dataloader_persistent_workers = False  # --fast's default; a DataLoader without workers has none to keep
    if args.bf16 and args.fp16:
        raise UsageError("--bf16 and --fp16 are both on (--fast turns on --bf16): pass --bf16 false or drop --fp16.")
    return parsed


#: What ``--fast`` turns on: defaults below the command line (an option given there wins), above the recipe.
FAST_PATH_DEFAULTS: dict[str, Any] = {
    "bf16": True,  # autocast; the SIGReg statistics and the soft-target loss stay float32
    "torch_compile": True,
    "channels_last": True,
    "fused_optimizer": True,
    "device_augmentation": True,
    "dataloader_persistent_workers": True,
}


#: TrainingArguments options this command does not use (it builds its own optimiser and schedule), with the
#: options that do the job. Given on the command line they are refused: no option may be a silent no-op.
UNHONOURED_OPTIONS = {
    "--optim": "--optimizer {sgd,adamw,muon}",
    "--optim_args": "--optimizer and its fields (--momentum, --muon_*, --aux_*)",
    "--optim_target_modules": "--muon_params",
    "--lr_scheduler_type": "--lr_schedule {cosine,constant} (with --lr_schedule_interval, --eta_min)",
    "--lr_scheduler_kwargs": "--lr_schedule_interval and --eta_min",
}


class UsageError(ValueError):
    """The command's options or data are invalid; the message names the value and what to do."""


def refuse_unhonoured_options(argv: Sequence[str]) -> None:
    """Raise :class:`UsageError` for a TrainingArguments option that this command would silently ignore."""
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    for option, instead in UNHONOURED_OPTIONS.items():
        if option in given:
            raise UsageError(
                f"{option} is not used by this command, which builds the recipes' own optimiser and schedule: "
                f"use {instead}."
            )


def check_sizes(args: SIGRegConfig) -> None:
    """Batch sizes and the training length must be positive (one-line errors before any data is read)."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be a positive integer; got {getattr(args, name)}.")
    if args.max_steps <= 0 and not args.num_train_epochs > 0:
        raise UsageError(f"--num_train_epochs must be positive (or set --max_steps); got {args.num_train_epochs}.")


def build_image_processor(data: PreparedImageData) -> ViTImageProcessor:
    """The image processor that reproduces the evaluation transform (resize to size, /255, normalise)."""
    return ViTImageProcessor(
        do_resize=True,
        size={"height": data.image_size, "width": data.image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(data.mean),
        image_std=list(data.std),
    )


def build_model(model_args: ModelArguments, data: PreparedImageData) -> torch.nn.Module:
    """A registry model (random init) or ``init_from`` a saved folder, sized to the dataset's classes."""
    if model_args.init_from:
        return AutoModelForImageClassification.from_pretrained(model_args.init_from)
    overrides: dict[str, Any] = {}
    if model_args.model_overrides:
        try:
            overrides = json.loads(model_args.model_overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"--model_overrides must be a JSON object, got {model_args.model_overrides!r}") from err
        if not isinstance(overrides, dict):
            raise ValueError(f"--model_overrides must be a JSON object, got {model_args.model_overrides!r}")
    overrides.setdefault("image_size", data.image_size)
    overrides.setdefault("id2label", {i: name for i, name in data.id2label.items()})
    overrides.setdefault("label2id", {name: i for i, name in data.id2label.items()})
    return models.create_model(model_args.model_name, num_classes=data.num_classes, **overrides)


def run_settings(
    trainer: SIGRegTrainer,
    *,
    args: SIGRegConfig,
    model_args: ModelArguments,
    data_args: DataArguments,
    optim_args: OptimArguments,
    run_args: RunArguments,
    data: PreparedImageData,
    wall_seconds: float,
    train_seconds: float,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """What the training command line records beside the per-epoch table (the :class:`RunRecord`'s
    ``settings``): configuration facts, every evaluation, final/best top-1 over evaluations, speed."""
    evals = [e for e in trainer.state.log_history if "eval_top1" in e]
    unique: dict[int, dict[str, Any]] = {}
    for e in evals:
        unique[int(e["step"])] = e  # a final evaluation at an already-evaluated step replaces it
    evals = [unique[s] for s in sorted(unique)]
    evaluations = [
        {
            "epoch": round(float(e.get("epoch", 0.0)), 4),
            "step": int(e["step"]),
            "top1": e["eval_top1"],
            "top5": e.get("eval_top5"),
            "loss": e.get("eval_loss"),
        }
        for e in evals
    ]
    at_epoch_end = [ev for ev in evaluations if ev["step"] % steps_per_epoch == 0]
    in_loop_eval_seconds = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history if "eval_top1" in e)
    global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    images = trainer.state.global_step * global_batch
    best = max(evaluations, key=lambda ev: ev["top1"]) if evaluations else None
    final = evaluations[-1] if evaluations else None
    train_only = max(train_seconds - in_loop_eval_seconds, 1e-9)
    train_logs = [e for e in trainer.state.log_history if "loss" in e and "eval_loss" not in e]
    return {
        "recipe": run_args.recipe,
        "description": run_args.description,
        "model_name": model_args.model_name,
        "dataset": data.source,
        "num_classes": data.num_classes,
        "train_images": len(data.train),
        "eval_images": len(data.eval) if data.eval is not None else 0,
        "train_subset": data_args.train_subset,
        "seed": args.seed,
        "optimizer": optim_args.optimizer,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "world_size": args.world_size,
        "mix": data_args.mix,
        "randaugment_num_ops": data_args.randaugment_num_ops,
        "sigreg_mode": args.sigreg_mode,
        "sigreg_alpha": args.sigreg_alpha if args.sigreg_mode != "none" else 0.0,
        "sigreg_sketch_type": args.sigreg_sketch_type if args.sigreg_mode != "none" else None,
        "sigreg_taps": trainer.regulariser.describe() if trainer.regulariser is not None else None,
        "task_loss_scale": optim_args.task_loss_scale,
        "speed_options": {
            "bf16": args.bf16, "torch_compile": args.torch_compile, "channels_last": model_args.channels_last,
            "fused_optimizer": optim_args.fused_optimizer, "device_augmentation": data_args.device_augmentation,
            "sync_batchnorm": any(isinstance(m, CrossRankBatchNorm) for m in trainer.model.modules()),
            "retain_host_memory": run_args.retain_host_memory,
        },
        "epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "max_steps": args.max_steps if args.max_steps > 0 else None,
        "epochs_completed": round(float(trainer.state.epoch or 0.0), 4),
        "global_step": trainer.state.global_step,
        "steps_per_epoch": steps_per_epoch,
        "test_top1_by_epoch": [ev["top1"] for ev in at_epoch_end],
        "test_top5_by_epoch": [ev["top5"] for ev in at_epoch_end],
        "evaluations": evaluations,
        "final_top1": final["top1"] if final else None,
        "final_top5": final["top5"] if final else None,
        "best_top1": best["top1"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "published_top1": run_args.published_top1,
        "last_train_log": train_logs[-1] if train_logs else None,
        "wall_seconds": round(wall_seconds, 3),
        "train_seconds": round(train_only, 3),
        "images_per_second": round(images / train_only, 2),
        "output_dir": args.output_dir,
        "notes": "top-1/top-5 in percent on the evaluation split; best_top1 is the best over the evaluations "
        "(the paper's 'Top-1 Acc' convention), final_top1 the last; images_per_second counts full global "
        "batches over training time without in-loop evaluation.",
    }


def summary_line(results: dict[str, Any]) -> str:
    """One human-readable line summarising a run."""
    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{x:.2f}%"

    published = results.get("published_top1")
    return (
        f"[sigreg_hf] {results.get('recipe') or results['model_name']}: final top-1 {pct(results['final_top1'])}, "
        f"best top-1 {pct(results['best_top1'])} (epoch {results['best_epoch']})"
        + (f", published {published:.2f}%" if published is not None else "")
        + f" | {results['global_step']} steps, {results['epochs_completed']} epochs, "
        f"wall {results['wall_seconds']:.1f}s, {results['images_per_second']:.1f} images/s | {results['output_dir']}"
    )


def run(
    parsed: ParsedArgs,
    command: str | None = None,
    labels: dict[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> RunRecord:
    """Train and evaluate one configuration; return its record (also written to the run folder).

    ``command`` is the reproduction command recorded in results.json and the model card; ``labels`` are
    set on the record before it is written (see :func:`build_record`); ``callbacks`` are added to the
    Trainer's (e.g. ``scripts/bench_train.py``'s step clock).
    """
    args, model_args, data_args, optim_args, run_args = parsed
    start = time.time()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # before anything is written: a folder with checkpoints is resumed or overwritten on request, never reused
    with args.main_process_first(desc="output directory check"):
        resume = resolve_resume(
            args.output_dir,
            args.resume_from_checkpoint,
            overwrite_output_dir=run_args.overwrite_output_dir and args.process_index == 0,
        )
    if run_args.retain_host_memory:
        run_args.retain_host_memory = retain_freed_memory()  # recorded as applied (False off glibc)
    set_seed(args.seed)
    if data_args.evaluation_split is None:
        args.eval_strategy = "no"
    with args.main_process_first(desc="dataset loading and decoding"):
        try:
            data = prepare_image_classification_data(data_args, seed=args.seed)
        except ValueError as err:  # labels, images, subset sizes: one line naming the row, file or value
            raise UsageError(str(err)) from err
    model = build_model(model_args, data)
    if should_sync_batchnorm(model, args.world_size, model_args.sync_batchnorm):
        model = convert_sync_batchnorm(model)  # before the Trainer wraps it in DDP
        logger.info("BatchNorm statistics over the global batch of %d processes (--sync_batchnorm %s).",
                    args.world_size, model_args.sync_batchnorm)
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    processor = build_image_processor(data)
    steps_per_epoch, total_steps, horizon = optim_args.schedule_steps(args, len(data.train))
    trainer = ImageClassificationTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.collator,
        processing_class=processor,
        compute_metrics=build_compute_metrics() if data.eval is not None else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if data.eval is not None else None,
        train_metric_name="train_top1_vs_dominant_label" if data_args.mix else "train_top1",
        task_loss_scale=optim_args.task_loss_scale,
        callbacks=(
            [AugmentationEpochCallback(data.clock, workers_use_clock=data.batch_augmentation is None)]
            if data.clock is not None else []
        ) + list(callbacks),
        batch_augmentation=data.batch_augmentation,
        device_mixer=data.collator if data.mix_on_device else None,
        clock=data.clock,
        channels_last=model_args.channels_last,
        compute_loss_func=soft_target_loss if data_args.mix else None,
        optim_args=optim_args,
    )
    logger.info(
        "Training %s on %s (%d train / %d eval images, %d classes): %d steps/epoch, %d steps, schedule over %d",
        model_args.model_name, data.source, len(data.train), len(data.eval) if data.eval is not None else 0,
        data.num_classes, steps_per_epoch, total_steps, horizon,
    )
    train_start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - train_start
    if data.eval is not None and run_args.final_eval:
        last_eval_step = max((int(e["step"]) for e in trainer.state.log_history if "eval_top1" in e), default=-1)
        if last_eval_step != trainer.state.global_step:
            trainer.evaluate()
    if run_args.save_final_model:
        trainer.save_model(args.output_dir)
    settings = run_settings(
        trainer, args=args, model_args=model_args, data_args=data_args, optim_args=optim_args, run_args=run_args,
        data=data, wall_seconds=time.time() - start, train_seconds=train_seconds, steps_per_epoch=steps_per_epoch,
    )
    record = build_record(trainer, settings, run_args=run_args, command=command, labels=labels)
    if trainer.is_world_process_zero():
        write_run_outputs(record, args.output_dir, plots=run_args.write_plots, results_file=run_args.results_file)
        print(summary_line(record.to_dict()), flush=True)
    return record


def build_record(
    trainer: SIGRegTrainer,
    settings: dict[str, Any],
    *,
    run_args: RunArguments,
    command: str | None = None,
    labels: dict[str, Any] | None = None,
) -> RunRecord:
    """The run's :class:`RunRecord`: the trainer's log history, the CLI's ``settings``, the recipe, ``labels``.

    The recipe's published top-1 is kept only on data with as many classes as CIFAR-100 (the recipes' data).
    ``labels`` (e.g. the quickstart's portable dataset name) are set last.
    """
    record = RunRecord.from_trainer(
        trainer,
        recipe=run_args.recipe,
        epochs=settings["epochs_completed"],
        wall_seconds=settings["wall_seconds"],
        images_per_second=settings["images_per_second"],
        published_top1=run_args.published_top1,
        recipe_config=load_recipe(run_args.recipe) if run_args.recipe else None,
        command=command or " ".join(["train.py", *sys.argv[1:]]),
        settings=settings,
        compare_published=settings.get("num_classes") == PUBLISHED_NUM_CLASSES,
    )
    return record.update(**labels) if labels else record


def main(
    argv: Sequence[str] | None = None, *, command: str | None = None, labels: dict[str, Any] | None = None
) -> RunRecord | None:
    """Entry point of ``scripts/train.py`` / ``sigreg-hf train``; returns the run's record (None for
    ``--list_recipes``). ``command`` (the reproduction command) and ``labels`` go into the record."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = parse_args(argv)
    if parsed is None:
        return None
    return run(parsed, command=command or " ".join(["python scripts/train.py", *argv]), labels=labels)


def cli() -> None:
    """Console entry: like :func:`main`, but configuration/data errors end the process with a clean message."""
    try:
        main()
    except (DatasetUnavailableError, RecipeError, UsageError, OutputDirectoryInUseError, LaunchError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    cli()
