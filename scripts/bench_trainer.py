"""Steps/s of the plain Trainer vs SIGRegTrainer (none / weak / strong) on the same model and data.

One process, synthetic CIFAR-shaped data held in memory (no loader workers), SGD, fp32, the paper's taps
(``sigreg_layers="auto"``). Each repeat trains every variant (in rotating order, to spread machine drift)
for ``--warmup`` untimed steps plus ``--steps`` timed steps; the report gives each variant's median
steps/s over the repeats and its overhead relative to the plain Trainer.

    python scripts/bench_trainer.py                 # ResNet18 (CIFAR) and ViT "Peak", batch 128
    python scripts/bench_trainer.py --quick         # small models and batch, a smoke run in seconds
    python scripts/bench_trainer.py --models vit --repeats 7 --steps 30 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from sigreg_hf.config import SIGRegConfig
from sigreg_hf.trainer import SIGRegTrainer

VARIANTS = ("trainer", "none", "weak", "strong")
ALPHA = {"none": 0.0, "weak": 0.1, "strong": 0.01}


class Synthetic(Dataset):
    def __init__(self, n: int, image_size: int, num_classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, image_size, image_size, generator=g)
        self.y = torch.randint(0, num_classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class StepTimer(TrainerCallback):
    """Wall time from the end of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._sync()
            self.start = time.perf_counter()
        elif state.global_step == state.max_steps:
            self._sync()
            self.end = time.perf_counter()


def build_model(name: str, quick: bool, num_classes: int) -> nn.Module:
    """ResNet18 (CIFAR variant) or the "Peak" ViT from sigreg_hf.models; transformers models as fallback."""
    try:
        from sigreg_hf.models import create_model
    except ImportError:  # pragma: no cover - the package's models are optional here
        create_model = None
    if create_model is not None:
        if name == "resnet18":
            small: dict[str, Any] = {"stem_width": 16, "widths": [16, 32, 64, 128]} if quick else {}
            return create_model("resnet18_cifar", num_classes=num_classes, **small)
        if name == "vit":
            small = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2} if quick else {}
            return create_model("vit_peak", num_classes=num_classes, **small)
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    if name == "resnet18":
        widths = [16, 32, 64, 128] if quick else [64, 128, 256, 512]
        return ResNetForImageClassification(
            ResNetConfig(
                embedding_size=widths[0],
                hidden_sizes=widths,
                depths=[2, 2, 2, 2],
                layer_type="basic",
                downsample_in_first_stage=False,
                num_labels=num_classes,
            )
        )
    dim, depth, heads = (64, 3, 2) if quick else (192, 9, 3)
    return ViTForImageClassification(
        ViTConfig(
            image_size=32,
            patch_size=4,
            hidden_size=dim,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            intermediate_size=4 * dim,
            num_labels=num_classes,
        )
    )


def run_variant(model_name: str, variant: str, opts: argparse.Namespace, out: str) -> float:
    """Train one variant for warmup + steps; return timed steps per second."""
    torch.manual_seed(0)
    model = build_model(model_name, opts.quick, opts.num_classes)
    total = opts.warmup + opts.steps
    data = Synthetic(opts.batch_size * total, 32, opts.num_classes)
    common = dict(
        output_dir=out,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        per_device_train_batch_size=opts.batch_size,
        max_steps=total,
        optim="sgd",
        learning_rate=0.01,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",
        use_cpu=opts.device == "cpu",
        seed=0,
    )
    timer = StepTimer(opts.warmup)
    if variant == "trainer":
        trainer: Trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer])
    else:
        args = SIGRegConfig(
            **common, sigreg_mode=variant, sigreg_alpha=ALPHA[variant], sigreg_sketch_dim=opts.sketch_dim
        )
        trainer = SIGRegTrainer(model=model, args=args, train_dataset=data, callbacks=[timer])
    trainer.train()
    assert timer.start is not None and timer.end is not None
    return opts.steps / (timer.end - timer.start)


def describe_machine(opts: argparse.Namespace) -> str:
    import accelerate
    import transformers

    lines = [
        f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"accelerate {accelerate.__version__}",
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}",
    ]
    if opts.device != "cpu" and torch.cuda.is_available():
        lines.append(f"device: {torch.cuda.get_device_name()}")
    else:
        lines.append("device: cpu")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,vit", help="comma-separated: resnet18, vit")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sketch-dim", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="small models, batch 16, 3 steps x 2 repeats")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.batch_size, opts.steps, opts.warmup, opts.repeats = 16, 3, 1, 2
    if opts.threads:
        torch.set_num_threads(opts.threads)
    variants = [v.strip() for v in opts.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "trainer" not in variants:
        parser.error(f"--variants must include 'trainer' and only use {VARIANTS}; got {variants}")

    print(describe_machine(opts))
    print(
        f"batch {opts.batch_size}, {opts.warmup} warm-up + {opts.steps} timed steps, {opts.repeats} repeats, "
        f"sketch_dim {opts.sketch_dim}, fp32, SGD, synthetic 32x32 data in memory"
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for model_name in [m.strip() for m in opts.models.split(",") if m.strip()]:
            samples: dict[str, list[float]] = {v: [] for v in variants}
            for repeat in range(opts.repeats):
                order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
                for variant in order:
                    samples[variant].append(run_variant(model_name, variant, opts, out))
            medians = {v: statistics.median(s) for v, s in samples.items()}
            results[model_name] = medians
            base = medians["trainer"]
            print(f"\n{model_name}: median steps/s over {opts.repeats} repeats")
            print(f"  {'variant':<10}{'steps/s':>10}{'overhead':>11}   samples")
            for variant in variants:
                overhead = (base / medians[variant] - 1.0) * 100.0
                spread = ", ".join(f"{x:.2f}" for x in samples[variant])
                print(f"  {variant:<10}{medians[variant]:>10.3f}{overhead:>10.1f}%   [{spread}]")
    print("\noverhead = extra time per step relative to the plain Trainer (positive = slower)")
    return results


if __name__ == "__main__":
    main()
