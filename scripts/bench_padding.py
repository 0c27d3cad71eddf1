"""What keeping padded tokens (with a sample mask) costs against selecting the real ones, in SIGRegTrainer steps.

The trainer regularises a causal LM with every real token a sample. With padding it can either select the real
tokens (``x[mask]``: a data-dependent shape, so the host waits for the device once per tapped layer and step) or
keep every position and pass the mask to the losses (``sample_mask``: the same statistic, computed over the padding
too, no host wait). The trainer does the second. This script times both, side by side in one process, on a small
Llama with right-padded batches, for weak and strong SIGReg and a padding share of 0 and 50 %; ``none`` (no
regulariser) is the floor. On a CPU the host wait costs nothing, so the ratio shows only the extra work; on a GPU
it shows both.

    python scripts/bench_padding.py                       # 2 threads, batch 16 x 256 tokens, 5 repeats
    python scripts/bench_padding.py --quick               # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trainer import StepTimer  # noqa: E402
from machine_info import cpu_model  # noqa: E402

from sigreg_hf import SIGRegConfig, SIGRegTrainer, SIGRegulariser  # noqa: E402

VARIANTS = ("none", "weak-select", "weak-mask", "strong-select", "strong-mask")


class PaddedTokens(Dataset):
    """Right-padded sequences whose lengths make ``padding`` the expected share of padded positions."""

    def __init__(self, n: int, seq_len: int, vocab: int, padding: float) -> None:
        g = torch.Generator().manual_seed(0)
        real = max(2, round(seq_len * (1 - padding)))
        low, high = max(2, 2 * real - seq_len), min(seq_len, seq_len if padding == 0 else 2 * real - 2)
        lengths = torch.randint(low, high + 1, (n,), generator=g) if padding else torch.full((n,), seq_len)
        self.mask = (torch.arange(seq_len) < lengths[:, None]).long()
        self.ids = torch.randint(1, vocab, (n, seq_len), generator=g) * self.mask

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        labels = torch.where(self.mask[i] == 1, self.ids[i], -100)
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": labels}


class SelectingRegulariser(SIGRegulariser):
    """The regulariser as it was: real tokens selected (``keep_padding`` off), decisions read on the host."""

    def _pool(self, outputs: Any, attention_mask: torch.Tensor | None, *, keep_padding: bool):
        return super()._pool(outputs, attention_mask, keep_padding=False)


def run_variant(variant: str, padding: float, opts: argparse.Namespace, out: str) -> float:
    """Train ``warmup + steps`` steps of one variant; return timed steps per second."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=opts.vocab, hidden_size=opts.hidden, intermediate_size=4 * opts.hidden,
                         num_hidden_layers=opts.layers, num_attention_heads=opts.heads, max_position_embeddings=1024)
    model = LlamaForCausalLM(config)
    total = opts.warmup + opts.steps
    data = PaddedTokens(opts.batch_size * total, opts.seq_len, opts.vocab, padding)
    mode = variant.split("-")[0]
    args = SIGRegConfig(
        output_dir=out, report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True,
        per_device_train_batch_size=opts.batch_size, max_steps=total, optim="adamw_torch", learning_rate=1e-3,
        dataloader_num_workers=0, train_sampling_strategy="sequential", use_cpu=opts.device == "cpu", seed=0,
        sigreg_mode=mode, sigreg_alpha=0.01, sigreg_layers=[r"model\.layers\.\d+"],
    )  # fmt: skip
    regulariser = None
    if variant.endswith("-select"):
        regulariser = SelectingRegulariser.from_args(model, args, check_finite=False)
    timer = StepTimer(opts.warmup)
    trainer = SIGRegTrainer(model=model, args=args, train_dataset=data, callbacks=[timer], regulariser=regulariser)
    trainer.remove_callback(PrinterCallback)  # the Trainer's own log lines would bury the table
    if variant.endswith("-mask"):
        assert type(trainer.regulariser) is SIGRegulariser
    trainer.train()
    return opts.steps / (timer.end - timer.start)


def main(argv: list[str] | None = None) -> dict[float, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--paddings", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny model and batch, 2 steps x 2 repeats")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.batch_size, opts.seq_len, opts.hidden, opts.layers, opts.vocab = 4, 32, 32, 2, 100
        opts.steps, opts.warmup, opts.repeats = 2, 1, 2
    torch.set_num_threads(opts.threads)
    import transformers

    device = torch.cuda.get_device_name() if opts.device == "cuda" else cpu_model()
    print(f"machine: {device}, {platform.machine()}, torch threads {opts.threads}; python {sys.version.split()[0]}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")  # fmt: skip
    print(f"Llama {opts.layers} x {opts.hidden}, batch {opts.batch_size} x {opts.seq_len} tokens, AdamW, alpha 0.01, "
          f"every decoder layer tapped; {opts.warmup} warm-up + {opts.steps} timed steps, {opts.repeats} repeats, "
          "rotating order")  # fmt: skip
    results: dict[float, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for padding in opts.paddings:
            samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for repeat in range(opts.repeats):
                for variant in VARIANTS[repeat % len(VARIANTS) :] + VARIANTS[: repeat % len(VARIANTS)]:
                    samples[variant].append(run_variant(variant, padding, opts, out))
            results[padding] = {v: statistics.median(s) for v, s in samples.items()}
    print("\n| padding | variant | steps/s (median) | mask vs select |")
    print("|---|---|---|---|")
    for padding, medians in results.items():
        for variant, rate in medians.items():
            ratio = ""
            if variant.endswith("-mask"):
                ratio = f"{rate / medians[variant.replace('-mask', '-select')]:.3f}x"
            print(f"| {padding:.0%} | {variant} | {rate:.3f} | {ratio} |")
    return results


if __name__ == "__main__":
    main()
