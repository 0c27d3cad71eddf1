"""A small causal LM trained from scratch with SIGRegTrainer on real English text (issue 14, part 2).

The corpus is the King James Bible as Debian's ``bible-kjv-text`` package ships it (public domain, 31,102 verses,
4.4 MB as text), exported one verse per line with the package's own reader::

    apt-get install -y bible-kjv                      # pulls bible-kjv-text (the data) and the `bible` reader
    bible -f -m 8192 "gen1:1-rev22:21" > kjv.txt     # "Ge1:1 In the beginning God created ..."

Split: consecutive blocks of 50 verses; every 20th block is held out for validation (5%, whole passages, no
verse in both). A byte-level BPE tokenizer (``tokenizers``) is trained on the training split only. The text of
each split is tokenised, concatenated with an end-of-text token between verses, and cut into blocks of
``--seq_len`` tokens (no padding: every position is a real token).

The model is a Llama-style decoder from a config (random init), trained with ``SIGRegTrainer`` exactly as a user
would: ``sigreg_layers="auto"`` taps every decoder layer with every token a sample. Every run writes
``results.json`` (validation loss and perplexity by step, the regulariser's value, tokens/s) and
``python scripts/lm_experiment.py report RUN_DIR...`` writes the curves and ``summary.json``.

    python scripts/lm_experiment.py train --corpus kjv.txt --sigreg_mode weak --seed 0 --output_dir runs/lm/weak_s0
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sigreg_hf import SIGRegConfig, SIGRegTrainer

VERSE_LINE = re.compile(r"^(?P<ref>\S+?\d+:\d+) (?P<text>.+)$")
EOS = "<|endoftext|>"


def read_verses(path: str | Path) -> list[str]:
    """Verses of a ``bible -f`` export ("Ge1:1 In the beginning ..."), references stripped.

    A line that is not a verse is an error naming the file and line."""
    verses = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = VERSE_LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not a 'Book1:1 text' verse line: {line[:60]!r}")
        verses.append(match["text"].strip())
    if not verses:
        raise ValueError(f"{path}: no verses.")
    return verses


def split_verses(verses: list[str], *, block: int = 50, every: int = 20) -> tuple[list[str], list[str]]:
    """Consecutive blocks of ``block`` verses; every ``every``-th block (the last of each stride) is validation."""
    train, val = [], []
    for start in range(0, len(verses), block):
        target = val if (start // block) % every == every - 1 else train
        target.extend(verses[start : start + block])
    if not val:
        raise ValueError(f"{len(verses)} verses give no validation block: need more than {block * (every - 1)}.")
    return train, val


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` (the training split only), wrapped for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def token_blocks(tokenizer: PreTrainedTokenizerFast, texts: list[str], seq_len: int) -> tuple[Dataset, int]:
    """Tokenise, join verses with EOS, cut into full blocks of ``seq_len`` tokens (labels = input_ids).

    Returns the blocks and the number of tokens before cutting."""
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    usable = (len(ids) // seq_len) * seq_len
    if usable == 0:
        raise ValueError(f"{len(ids)} tokens: fewer than one block of seq_len={seq_len}.")
    blocks = torch.tensor(ids[:usable]).view(-1, seq_len)
    return Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()}), len(ids)


def train(ns: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(ns.seed)
    verses = read_verses(ns.corpus)
    train_text, val_text = split_verses(verses)
    tokenizer = train_tokenizer(train_text, ns.vocab_size)
    train_ds, train_tokens = token_blocks(tokenizer, train_text, ns.seq_len)
    val_ds, val_tokens = token_blocks(tokenizer, val_text, ns.seq_len)
    if ns.max_val_blocks and len(val_ds) > ns.max_val_blocks:
        val_ds = val_ds.select(range(ns.max_val_blocks))

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=ns.hidden_size, intermediate_size=ns.intermediate_size,
        num_hidden_layers=ns.num_layers, num_attention_heads=ns.num_heads, num_key_value_heads=ns.num_heads,
        max_position_embeddings=ns.seq_len, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    args = SIGRegConfig(
        output_dir=ns.output_dir, seed=ns.seed, max_steps=ns.max_steps, learning_rate=ns.learning_rate,
        per_device_train_batch_size=ns.batch_size, per_device_eval_batch_size=ns.batch_size,
        lr_scheduler_type="cosine", warmup_steps=ns.warmup_steps, weight_decay=0.1, max_grad_norm=1.0,
        optim="adamw_torch", eval_strategy="steps", eval_steps=ns.eval_steps, logging_steps=ns.eval_steps,
        save_strategy="no", report_to="none", dataloader_num_workers=0, use_cpu=True,
        sigreg_mode=ns.sigreg_mode, sigreg_alpha=ns.sigreg_alpha, sigreg_layers="auto",
        sigreg_weighting="convex", sigreg_sketch_dim=64,
    )  # fmt: skip
    trainer = SIGRegTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    history = trainer.state.log_history
    evals = [e for e in history if "eval_loss" in e]
    trains = [e for e in history if "loss" in e and "eval_loss" not in e]
    train_seconds = wall - sum(float(e.get("eval_runtime", 0.0)) for e in evals)  # the Trainer times evaluation

    def val_task(e: dict[str, Any]) -> float:
        return float(e.get("eval_task_loss", e["eval_loss"]))

    tokens_trained = trainer.state.global_step * ns.batch_size * ns.seq_len
    record = {
        "experiment": "lm",
        "corpus": str(ns.corpus),
        "corpus_verses": len(verses),
        "train_tokens": train_tokens,
        "val_tokens_evaluated": len(val_ds) * ns.seq_len,
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "num_attention_heads", "max_position_embeddings")},  # fmt: skip
        "seed": ns.seed,
        "sigreg_mode": ns.sigreg_mode,
        "sigreg_alpha": ns.sigreg_alpha if ns.sigreg_mode != "none" else 0.0,
        "sigreg_sketch_type": "gaussian" if ns.sigreg_mode != "none" else None,
        "sigreg_layers": list(getattr(getattr(trainer, "regulariser", None), "layer_names", None) or []),
        "max_steps": ns.max_steps,
        "batch_size": ns.batch_size,
        "seq_len": ns.seq_len,
        "learning_rate": ns.learning_rate,
        "tokens_trained": tokens_trained,
        "epochs_over_train_tokens": round(tokens_trained / train_tokens, 3),
        "steps": [e["step"] for e in evals],
        "val_loss_by_step": [round(val_task(e), 5) for e in evals],
        "val_perplexity_by_step": [round(math.exp(val_task(e)), 3) for e in evals],
        "val_sigreg_loss_by_step": [e.get("eval_sigreg_loss") for e in evals],
        "train_log": [
            {k: e.get(k) for k in ("step", "loss", "task_loss", "sigreg_loss", "learning_rate")} for e in trains
        ],
        "final_val_loss": round(val_task(evals[-1]), 5) if evals else None,
        "best_val_loss": round(min(val_task(e) for e in evals), 5) if evals else None,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(tokens_trained / max(train_seconds, 1e-9), 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version(), "machine": platform.machine()},  # fmt: skip
        "threads": torch.get_num_threads(),
        "command": "python scripts/lm_experiment.py " + " ".join(sys.argv[1:]),
    }
    out = Path(ns.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{ns.sigreg_mode} seed {ns.seed}: val loss {record['final_val_loss']} "
        f"(ppl {math.exp(record['final_val_loss']):.2f}), {record['tokens_per_second']:.0f} tokens/s, {wall:.0f} s"
    )
    return record


_COLOURS = {"none": "#1f77b4", "weak": "#2ca02c", "strong": "#d62728"}


def report(run_dirs: list[str], output_dir: str) -> dict[str, Any]:
    """``summary.json`` and the validation-loss / perplexity / regulariser curves of several runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads((Path(d) / "results.json").read_text()) for d in run_dirs]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_runs = [
        {k: r[k] for k in ("sigreg_mode", "sigreg_alpha", "sigreg_sketch_type", "seed", "steps", "val_loss_by_step",
                           "final_val_loss", "best_val_loss", "tokens_trained", "tokens_per_second",
                           "wall_seconds")}  # fmt: skip
        for r in runs
    ]
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_mode.setdefault(r["sigreg_mode"], []).append(r)
    across = {
        mode: {
            "seeds": [r["seed"] for r in group],
            "final_val_loss_mean": round(sum(r["final_val_loss"] for r in group) / len(group), 5),
            "final_val_perplexity_mean": round(
                sum(math.exp(r["final_val_loss"]) for r in group) / len(group), 3
            ),
        }
        for mode, group in by_mode.items()
    }
    summary = {"experiment": "lm", "corpus": "Debian bible-kjv-text 4.38 (King James Bible)", "runs": summary_runs,
               "across_seeds": across}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), constrained_layout=True)
    for r in runs:
        colour = _COLOURS.get(r["sigreg_mode"], "black")
        label = f"{r['sigreg_mode']} seed {r['seed']}"
        style = "-" if r["seed"] == min(x["seed"] for x in by_mode[r["sigreg_mode"]]) else "--"
        axes[0].plot(r["steps"], r["val_loss_by_step"], style, color=colour, label=label)
        axes[1].plot(r["steps"], r["val_perplexity_by_step"], style, color=colour, label=label)
        logs = [e for e in r["train_log"] if e.get("sigreg_loss") is not None]
        if logs:
            axes[2].plot([e["step"] for e in logs], [e["sigreg_loss"] for e in logs], style, color=colour,
                         label=label)  # fmt: skip
    axes[0].set_title("validation loss (task cross-entropy)")
    axes[1].set_title("validation perplexity")
    axes[1].set_yscale("log")
    axes[2].set_title("train SIGReg statistic (mean over tapped layers)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(out / "curves.png", dpi=110)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run")
    t.add_argument("--corpus", required=True, help="a `bible -f` export, one 'Book1:1 text' verse per line")
    t.add_argument("--output_dir", required=True)
    t.add_argument("--sigreg_mode", choices=["none", "weak", "strong"], default="none")
    t.add_argument("--sigreg_alpha", type=float, default=0.01)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max_steps", type=int, default=600)
    t.add_argument("--eval_steps", type=int, default=100)
    t.add_argument("--batch_size", type=int, default=16)
    t.add_argument("--seq_len", type=int, default=128)
    t.add_argument("--learning_rate", type=float, default=2e-3)
    t.add_argument("--warmup_steps", type=int, default=100)
    t.add_argument("--vocab_size", type=int, default=2048)
    t.add_argument("--hidden_size", type=int, default=192)
    t.add_argument("--intermediate_size", type=int, default=512)
    t.add_argument("--num_layers", type=int, default=4)
    t.add_argument("--num_heads", type=int, default=4)
    t.add_argument(
        "--max_val_blocks", type=int, default=256, help="evaluate on the first N validation blocks (0: all)"
    )
    r = sub.add_parser("report", help="summary.json and curves of several runs")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--output_dir", required=True)
    ns = parser.parse_args(argv)
    if ns.command == "train":
        for name in ("max_steps", "eval_steps", "batch_size", "seq_len", "vocab_size"):
            if getattr(ns, name) <= 0:
                parser.error(f"--{name} must be positive; got {getattr(ns, name)}")
        train(ns)
    else:
        report(ns.run_dirs, ns.output_dir)


if __name__ == "__main__":
    main()
