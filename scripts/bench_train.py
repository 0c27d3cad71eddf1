"""The project's training path against a plain PyTorch loop on the same model, data and transforms.

    python scripts/bench_train.py --dataset_name /tmp/cifar10 --recipes mlp_sgd_none resnet18_sgd_none \
        --steps 120 --warmup 20 --repeats 3

For every recipe, the variants named by ``--variants`` (default ``project plain``) run in fresh processes, in
rotating order, ``--repeats`` times each:

* ``project``: ``scripts/train.py``'s own code (``cli_train.run``: recipe, ``datasets`` pipeline with the
  decoded-image cache and keyed augmentation, the app's ``ImageClassificationTrainer``), ``--max_steps``
  steps, no evaluation or checkpointing;
* ``plain``: a seed-style loop: the decoded training images held in memory as one uint8 tensor, the same
  per-image torchvision transforms (crop, flip, RandAugment where the recipe has it) in a ``DataLoader`` with
  the same number of workers, CutMix/MixUp with torchvision where the recipe mixes, the same model from the
  registry, ``torch.optim`` with the recipe's hyperparameters, gradient clipping where the recipe clips;
* ``fast``: ``project`` with ``--fast true`` (see the README's "Speed" section).

On a GPU both loops run there (a step is timed after ``torch.cuda.synchronize()``).

Reported per variant (median over repeats): training images/s over the steps after ``--warmup``; time to first
step, from the process's start (imports included) and from the end of the imports, to the end of the first
optimiser step; the main process's peak resident memory. Both variants read the dataset's decoded-image
cache, which the first (untimed) preparation builds if it is missing. ``--estimate_table`` turns the measured
rates into the training hours of all 27 recipes.
"""

from __future__ import annotations

import time

_PROCESS_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from machine_info import cpu_model  # noqa: E402  (scripts/ is on the path of a script run from it)

RESULT_PREFIX = "BENCH_RESULT "


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------ workers
def run_project(opts: argparse.Namespace, imports_done: float) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback

    from sigreg_hf.experiments import cli_train

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.time())

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        argv = [
            "--recipe", opts.recipe, "--dataset_name", opts.dataset_name, "--mean_std", opts.mean_std,
            "--max_steps", str(opts.steps), "--eval_split", "none", "--save_strategy", "no",
            "--logging_steps", str(opts.steps), "--report_to", "none", "--output_dir", out,
            "--write_plots", "false", "--save_final_model", "false", "--final_eval", "false",
            "--dataloader_num_workers", str(opts.num_workers), "--seed", "0",
            "--per_device_train_batch_size", str(opts.batch_size), "--disable_tqdm", "true",
            *(["--fast", "true", *shlex.split(opts.fast_args)] if opts.variant == "fast" else []),
        ]
        cli_train.run(cli_train.parse_args(argv), callbacks=[clock])
    return _timing(clock.times, opts, imports_done)


def run_plain(opts: argparse.Namespace, imports_done: float) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from sigreg_hf import models
    from sigreg_hf.experiments.data.cache import decode_images
    from sigreg_hf.experiments.data.loading import load_image_classification_dataset
    from sigreg_hf.experiments.data.transforms import build_train_transform, resolve_mean_std
    from sigreg_hf.experiments.recipes import load_recipe

    torch.manual_seed(0)
    recipe = load_recipe(opts.recipe)
    raw = load_image_classification_dataset(opts.dataset_name, eval_split=None)
    decoded = decode_images(raw.train, image_column=raw.image_column, label_column=raw.label_column, image_size=32)
    table = decoded.with_format("arrow")
    cells = table["pixels"].combine_chunks()  # equal-size HWC byte strings, contiguous in one Arrow buffer
    offsets = np.frombuffer(cells.buffers()[1], dtype=np.int32)[cells.offset : cells.offset + len(cells) + 1]
    flat = np.frombuffer(cells.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    pixels = flat.reshape(len(decoded), 32, 32, 3)
    images = torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, 32, 32]
    labels = torch.as_tensor(table[raw.label_column].to_numpy(), dtype=torch.long)
    mean, std = resolve_mean_std(opts.mean_std)
    transform = build_train_transform(
        mean, std, randaugment_num_ops=recipe.get("randaugment_num_ops", 0),
        randaugment_magnitude=recipe.get("randaugment_magnitude", 9),
    )

    class InMemory(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return transform(images[i]), labels[i]

    mixer = None
    if recipe.get("mix"):
        mixer = v2.RandomChoice(
            [v2.CutMix(alpha=recipe["cutmix_alpha"], num_classes=raw.num_classes),
             v2.MixUp(alpha=recipe["mixup_alpha"], num_classes=raw.num_classes)]
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = torch.utils.data.DataLoader(
        InMemory(), batch_size=opts.batch_size, shuffle=True, num_workers=opts.num_workers, drop_last=True,
        pin_memory=device.type == "cuda",
    )
    overrides = recipe.get("model_overrides") or {}
    overrides = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    model = models.create_model(recipe["model_name"], num_classes=raw.num_classes, **overrides).to(device)
    decay = recipe.get("weight_decay", 0.0)
    if recipe["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe["learning_rate"], momentum=recipe.get("momentum", 0.0),
            nesterov=recipe.get("nesterov", False), weight_decay=decay,
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=decay)
    clip = recipe.get("max_grad_norm", 0.0)
    model.train()
    times: list[float] = []
    while len(times) < opts.steps:
        for x, y in loader:
            if mixer is not None:
                x, y = mixer(x, y)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(pixel_values=x).logits
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip and clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()  # a step's time, not its launch (the project's clock syncs the same way)
            times.append(time.time())
            if len(times) == opts.steps:
                break
    return _timing(times, opts, imports_done)


def _timing(times: list[float], opts: argparse.Namespace, imports_done: float) -> dict[str, Any]:
    if len(times) <= opts.warmup:
        raise SystemExit(f"only {len(times)} steps ran; need more than --warmup {opts.warmup}")
    measured = len(times) - 1 - opts.warmup
    return {
        "images_per_second": measured * opts.batch_size / (times[-1] - times[opts.warmup]),
        "first_step_from_start": times[0] - opts.spawned_at,
        "first_step_after_imports": times[0] - imports_done,
        "imports": imports_done - opts.spawned_at,
        "peak_rss_mib": _peak_rss_mib(),
        "steps": len(times),
    }


def worker(opts: argparse.Namespace) -> None:
    import torch
    import transformers  # noqa: F401  (both variants pay for these imports before their first step)

    torch.set_num_threads(opts.threads)
    imports_done = time.time()
    result = (run_plain if opts.variant == "plain" else run_project)(opts, imports_done)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------ driver
def spawn(opts: argparse.Namespace, recipe: str, variant: str) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), MKL_NUM_THREADS=str(opts.threads),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    cmd = [
        sys.executable, __file__, "--worker", variant, "--recipe", recipe, "--dataset_name", opts.dataset_name,
        "--mean_std", opts.mean_std, "--steps", str(opts.steps), "--warmup", str(opts.warmup),
        "--batch_size", str(opts.batch_size), "--num_workers", str(opts.num_workers),
        "--threads", str(opts.threads), "--spawned_at", repr(time.time()), "--fast_args", opts.fast_args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{variant} {recipe} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def machine_line() -> str:
    import datasets
    import torch
    import transformers

    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"machine: {cpu}, {os.cpu_count()} logical CPUs, {gpu}; python {platform.python_version()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, datasets {datasets.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", required=True, help="Dataset folder or Hub id (e.g. /tmp/cifar10).")
    parser.add_argument("--mean_std", default="cifar10")
    parser.add_argument("--recipes", nargs="+", default=["mlp_sgd_none", "resnet18_sgd_none"])
    parser.add_argument("--steps", type=int, default=120, help="Optimiser steps per process.")
    parser.add_argument("--warmup", type=int, default=20, help="Steps left out of images/s.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers, both variants.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process, both variants.")
    parser.add_argument("--variants", nargs="+", default=["project", "plain"], choices=["project", "plain", "fast"],
                        help="What to run: project (the recipe as is), plain (the plain loop), fast (--fast).")
    parser.add_argument("--fast_args", default="", help="Extra scripts/train.py options for the fast variant.")
    parser.add_argument("--estimate_table", action="store_true",
                        help="Estimate the training time of all 27 recipes from the measured rates (by model).")
    parser.add_argument("--output", default=None, help="Also write the Markdown table to this file.")
    parser.add_argument("--worker", choices=["project", "plain", "fast"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spawned_at", type=float, default=_PROCESS_START, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        opts.variant = opts.worker
        worker(opts)
        return

    variants = list(dict.fromkeys(opts.variants))
    print(machine_line())
    print(f"steps {opts.steps} (warmup {opts.warmup}), batch {opts.batch_size}, {opts.num_workers} DataLoader workers, "
          f"{opts.threads} torch thread(s) per process, {opts.repeats} repeats, rotating order", flush=True)
    # prepare (and cache) the data once, untimed
    spawn(argparse.Namespace(**{**vars(opts), "steps": 2, "warmup": 0}), opts.recipes[0], "project")
    rows: list[str] = []
    rates: dict[str, dict[str, float]] = {}
    for recipe in opts.recipes:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for rep in range(opts.repeats):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for variant in order:
                r = spawn(opts, recipe, variant)
                runs[variant].append(r)
                print(f"  {recipe} {variant} repeat {rep}: {r['images_per_second']:.0f} images/s, first step "
                      f"{r['first_step_from_start']:.2f} s ({r['first_step_after_imports']:.2f} s after imports), "
                      f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)
        baseline = "plain" if "plain" in runs else variants[0]
        plain_ips = statistics.median(r["images_per_second"] for r in runs[baseline])
        rates.setdefault(recipe, {}).update(
            {v: statistics.median(r["images_per_second"] for r in runs[v]) for v in variants}
        )
        for variant in variants:
            med = {k: statistics.median(r[k] for r in runs[variant]) for k in runs[variant][0]}
            per_rep = ", ".join(f"{r['images_per_second']:.0f}" for r in runs[variant])
            ratio = med["images_per_second"] / plain_ips
            rows.append(
                f"| {recipe} | {variant} | {med['images_per_second']:,.0f} | {ratio:.2f}x "
                f"| [{per_rep}] | {med['first_step_from_start']:.2f} | {med['first_step_after_imports']:.2f} "
                f"| {med['peak_rss_mib']:,.0f} |"
            )
    table = "\n".join([
        f"| recipe | variant | train images/s | vs {'plain' if 'plain' in variants else variants[0]} "
        "| per repeat | first step from start (s) "
        "| first step after imports (s) | peak RSS main process (MiB) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    if opts.estimate_table:
        table += "\n\n" + estimate_table(rates)
    print(table)
    if opts.output:
        Path(opts.output).write_text(machine_line() + "\n\n" + table + "\n")


#: A model not measured takes the rate of a similar one: the first-round ViT (6 blocks of 256) that of the Peak
#: ViT (9 blocks of 192, the same patch size and tokens).
ESTIMATE_STAND_INS = {"vit_rope": "vit_peak"}


def estimate_table(rates: dict[str, dict[str, float]], train_images: int = 50_000) -> str:
    """Training hours of every recipe (its epochs x 50,000 CIFAR-100 images) at the measured rate of its model.

    Each recipe takes the median rate of a measured recipe with the same model (its fastest variant); models
    not measured are listed without an estimate. Evaluation and start-up are not counted.
    """
    from sigreg_hf.experiments.recipes import list_recipes, load_recipe

    by_model: dict[str, tuple[float, str]] = {}
    for recipe, per_variant in rates.items():
        variant, rate = max(per_variant.items(), key=lambda kv: kv[1])
        by_model[load_recipe(recipe)["model_name"]] = (rate, f"{recipe} {variant}")
    for model, stand_in in ESTIMATE_STAND_INS.items():
        if model not in by_model and stand_in in by_model:
            rate, source = by_model[stand_in]
            by_model[model] = (rate, f"{source} (stand-in: {model} not measured)")
    lines = ["| recipe | epochs | rate used (images/s) | from | hours |", "|---|---|---|---|---|"]
    total, missing = 0.0, []
    for name in list_recipes():
        recipe = load_recipe(name)
        epochs = recipe["num_train_epochs"]
        if recipe["model_name"] not in by_model:
            missing.append(name)
            lines.append(f"| {name} | {epochs} | | not measured | |")
            continue
        rate, source = by_model[recipe["model_name"]]
        hours = epochs * train_images / rate / 3600
        total += hours
        lines.append(f"| {name} | {epochs} | {rate:,.0f} | {source} | {hours:.2f} |")
    lines.append(f"| **all measured recipes** | | | | **{total:.1f}** |")
    if missing:
        lines.append(f"\n{len(missing)} recipes have no measured model: {', '.join(missing)}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
