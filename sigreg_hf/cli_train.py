"""The training command line behind ``scripts/train.py``: recipe -> data -> model -> optimiser -> trainer.

``python scripts/train.py --recipe NAME [--any_field VALUE ...]``: the recipe's values are defaults,
command-line arguments win. Works as a plain process, under ``accelerate launch`` and under
``torchrun`` (the Trainer picks up the distributed environment). At the end it prints one summary
line, saves the final model and its image processor to ``output_dir`` (``from_pretrained``-loadable)
and writes ``results.json`` there (see :func:`collect_results`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, ViTImageProcessor, set_seed

from sigreg_hf.config import SIGRegConfig
from sigreg_hf.data import PreparedImageData, dominant_label_top1, prepare_image_classification_data
from sigreg_hf.metrics import build_compute_metrics, preprocess_logits_for_metrics
from sigreg_hf.optim import OptimizerFactory, build_lr_scheduler, build_optimizer, updates_per_epoch
from sigreg_hf.recipes import list_recipes, load_recipe, recipes_dir
from sigreg_hf.soft_targets import logits_of, soft_target_loss
from sigreg_hf.train_args import DataArguments, ModelArguments, OptimArguments, RunArguments
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
    if not torch.cuda.is_available():
        defaults["dataloader_pin_memory"] = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # Several processes and no GPU (accelerate launch / torchrun on CPU): DDP over gloo needs use_cpu.
        defaults["use_cpu"] = True
    parser = build_parser()
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv)


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
    import sigreg_hf.models as models  # registers the Auto classes

    if model_args.init_from:
        from transformers import AutoModelForImageClassification

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


def optimizer_kwargs(args: SIGRegConfig, optim_args: OptimArguments) -> dict[str, Any]:
    """Keyword arguments of :func:`sigreg_hf.optim.build_optimizer` from the parsed arguments."""
    return {
        "name": optim_args.optimizer,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "momentum": optim_args.momentum,
        "nesterov": optim_args.nesterov,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        "no_decay_bias_norm": optim_args.no_decay_bias_norm,
        "muon_params": optim_args.muon_params,
        "muon_momentum": optim_args.muon_momentum,
        "muon_nesterov": optim_args.muon_nesterov,
        "muon_ns_coefficients": optim_args.muon_ns_coefficients,
        "muon_adjust_lr_fn": optim_args.muon_adjust_lr_fn,
        "aux_learning_rate": optim_args.aux_learning_rate,
        "aux_betas": (optim_args.aux_adam_beta1, optim_args.aux_adam_beta2),
        "aux_weight_decay": optim_args.aux_weight_decay,
    }


def _sharded_engine(args: SIGRegConfig) -> bool:
    env = {k: os.environ.get(k, "").lower() for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")}
    return bool(args.fsdp) or bool(args.deepspeed) or "true" in env.values()


def schedule_steps(args: SIGRegConfig, optim_args: OptimArguments, num_train: int) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_training_steps, schedule_horizon_steps)`` as the Trainer will count them."""
    per_epoch = updates_per_epoch(
        num_train,
        per_device_batch_size=args.per_device_train_batch_size,
        world_size=args.world_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        drop_last=args.dataloader_drop_last,
    )
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    horizon = total
    if optim_args.lr_schedule_epochs is not None:
        horizon = max(1, math.ceil(optim_args.lr_schedule_epochs * per_epoch))
    return per_epoch, total, horizon


def optimizer_and_schedule(
    model: torch.nn.Module,
    args: SIGRegConfig,
    optim_args: OptimArguments,
    *,
    steps_per_epoch: int,
    total_steps: int,
    horizon: int,
) -> dict[str, Any]:
    """Trainer keyword arguments that install the optimiser and the lr schedule.

    Normally ``optimizers=(optimizer, LambdaLR)`` built here (exact per-epoch cosine per parameter group).
    Under FSDP / DeepSpeed the Trainer must create the optimizer after sharding, so it gets
    ``optimizer_cls_and_kwargs=(OptimizerFactory, kwargs)`` and the schedule is mapped onto the Trainer's
    own (``cosine_with_min_lr`` / ``constant``, stepped per optimiser step) with a warning.
    """
    opt_kwargs = optimizer_kwargs(args, optim_args)
    if _sharded_engine(args):
        if optim_args.optimizer == "muon":
            logger.warning("Muon under FSDP/DeepSpeed is unverified (sharded engines may not apply Muon's update); "
                           "prefer DDP (multi_gpu.yaml) for Muon recipes.")
        if optim_args.lr_schedule_interval == "epoch" and optim_args.lr_schedule == "cosine":
            logger.warning("Under FSDP/DeepSpeed the cosine schedule is stepped per optimiser step, not per epoch.")
        args.lr_scheduler_type = "constant" if optim_args.lr_schedule == "constant" else "cosine_with_min_lr"
        if args.lr_scheduler_type != "constant":
            args.lr_scheduler_kwargs = {"min_lr": optim_args.eta_min}
        return {"optimizer_cls_and_kwargs": (OptimizerFactory, opt_kwargs)}
    optimizer = build_optimizer(model, **opt_kwargs)
    scheduler = build_lr_scheduler(
        optimizer,
        schedule=optim_args.lr_schedule,
        total_steps=horizon,
        steps_per_epoch=steps_per_epoch,
        interval=optim_args.lr_schedule_interval,
        eta_min=optim_args.eta_min,
        warmup_steps=args.get_warmup_steps(total_steps),
    )
    return {"optimizers": (optimizer, scheduler)}


class ImageClassificationTrainer(SIGRegTrainer):
    """:class:`SIGRegTrainer` that also logs training top-1 and says what it measures.

    Without mixing it logs ``train_top1`` (percent, on the augmented training batches). With
    CutMix/MixUp a batch has no single true label, so it logs ``train_top1_vs_dominant_label``: the share
    of predictions equal to the largest-weight label of each mixed target.
    """

    def __init__(self, *args: Any, train_metric_name: str = "train_top1", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_metric_name = train_metric_name

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        labels = inputs.get("labels")  # read first: with compute_loss_func the Trainer pops them
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training and labels is not None:
            acc = dominant_label_top1(logits_of(outputs).detach(), labels) * 100.0
            self.log_metric(self.train_metric_name, self.accelerator.gather(acc.reshape(1)).mean())
        return (loss, outputs) if return_outputs else loss


def collect_results(
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
    """The ``results.json`` record: configuration facts, every evaluation, final/best top-1, speed."""
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


def run(parsed: ParsedArgs, command: str | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; return the results record (also written to results.json).

    ``command`` is the reproduction command recorded in results.json and the model card.
    """
    args, model_args, data_args, optim_args, run_args = parsed
    start = time.time()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    eval_split = None if data_args.eval_split.lower() in ("none", "") else data_args.eval_split
    if eval_split is None:
        args.eval_strategy = "no"
    with args.main_process_first(desc="dataset loading and decoding"):
        data = prepare_image_classification_data(
            data_args.dataset_name,
            dataset_config=data_args.dataset_config,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            train_split=data_args.train_split,
            eval_split=eval_split,
            cache_dir=data_args.dataset_cache_dir,
            train_subset=data_args.train_subset,
            max_eval_samples=data_args.max_eval_samples,
            seed=args.seed,
            decode_cache=data_args.decode_cache,
            decode_num_proc=data_args.decode_num_proc,
            image_size=data_args.image_size,
            crop_padding=data_args.crop_padding,
            hflip=data_args.hflip,
            randaugment_num_ops=data_args.randaugment_num_ops,
            randaugment_magnitude=data_args.randaugment_magnitude,
            mean_std=data_args.mean_std,
            mean=data_args.mean,
            std=data_args.std,
            mix=data_args.mix,
            mixup_alpha=data_args.mixup_alpha,
            cutmix_alpha=data_args.cutmix_alpha,
            mix_prob=data_args.mix_prob,
            mix_switch_prob=data_args.mix_switch_prob,
        )
    model = build_model(model_args, data)
    processor = build_image_processor(data)
    steps_per_epoch, total_steps, horizon = schedule_steps(args, optim_args, len(data.train))
    trainer_kwargs = optimizer_and_schedule(
        model, args, optim_args, steps_per_epoch=steps_per_epoch, total_steps=total_steps, horizon=horizon
    )
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
        compute_loss_func=soft_target_loss if data_args.mix else None,
        **trainer_kwargs,
    )
    logger.info(
        "Training %s on %s (%d train / %d eval images, %d classes): %d steps/epoch, %d steps, schedule over %d",
        model_args.model_name, data.source, len(data.train), len(data.eval) if data.eval is not None else 0,
        data.num_classes, steps_per_epoch, total_steps, horizon,
    )
    train_start = time.time()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.time() - train_start
    if data.eval is not None and run_args.final_eval:
        last_eval_step = max((int(e["step"]) for e in trainer.state.log_history if "eval_top1" in e), default=-1)
        if last_eval_step != trainer.state.global_step:
            trainer.evaluate()
    if run_args.save_final_model:
        trainer.save_model(args.output_dir)
    record = collect_results(
        trainer, args=args, model_args=model_args, data_args=data_args, optim_args=optim_args, run_args=run_args,
        data=data, wall_seconds=time.time() - start, train_seconds=train_seconds, steps_per_epoch=steps_per_epoch,
    )
    results = record
    if trainer.is_world_process_zero():
        results = write_outputs(record, trainer=trainer, args=args, run_args=run_args, command=command)
        print(summary_line(results), flush=True)
    return results


def write_outputs(
    record: dict[str, Any],
    *,
    trainer: SIGRegTrainer,
    args: SIGRegConfig,
    run_args: RunArguments,
    command: str | None = None,
) -> dict[str, Any]:
    """Write results.json (+ log CSV, plots, recipe.yaml) through :func:`sigreg_hf.results.write_run_outputs`."""
    from sigreg_hf.results import write_run_outputs

    recipe_config = load_recipe(run_args.recipe) if run_args.recipe else None
    return write_run_outputs(
        args.output_dir,
        log_history=trainer.state.log_history,
        recipe=run_args.recipe,
        seed=args.seed,
        epochs=record["epochs_completed"],
        wall_seconds=record["wall_seconds"],
        images_per_second=record["images_per_second"],
        published_top1=run_args.published_top1,
        recipe_config=recipe_config,
        command=command or " ".join(["train.py", *sys.argv[1:]]),
        record=record,
        plots=run_args.write_plots,
        results_file=run_args.results_file,
        compare_published=record.get("num_classes") == PUBLISHED_NUM_CLASSES,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Entry point of ``scripts/train.py``; returns the results record (None for ``--list_recipes``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = parse_args(argv)
    if parsed is None:
        return None
    return run(parsed, command=" ".join(["python scripts/train.py", *argv]))


def cli() -> None:
    """Console entry: like :func:`main`, but configuration/data errors end the process with a clean message."""
    from sigreg_hf.data import DatasetUnavailableError
    from sigreg_hf.recipes import RecipeError

    try:
        main()
    except (DatasetUnavailableError, RecipeError) as err:
        raise SystemExit(f"error: {err}") from None
