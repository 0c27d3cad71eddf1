"""The ``sigreg-hf`` console script.

Subcommands::

    sigreg-hf quickstart [--output_dir DIR] [--dataset digits|HUB_ID|PATH] [--epochs N] [--seed S]
                         [any scripts/train.py option, passed to the three runs]
    sigreg-hf train ...                      (= python scripts/train.py ...)
    sigreg-hf collect RUN_DIR... [--output_dir DIR]
    sigreg-hf push RUN_DIR --repo_id ORG/NAME [--private] [--overwrite_readme]
    sigreg-hf evaluate --model ORG/NAME|PATH [--dataset_name ...] [--output_json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sigreg_hf.experiments import cli_train
from sigreg_hf.experiments.collect import collect_results, experiment_summary
from sigreg_hf.experiments.data import DatasetUnavailableError
from sigreg_hf.experiments.evaluate import CheckpointUnavailableError, evaluate_checkpoint
from sigreg_hf.experiments.push import HubPushError, push_run_to_hub
from sigreg_hf.experiments.quickstart import run_quickstart

__all__ = ["build_parser", "main"]


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="MLP without / with weak / with strong SIGReg, side by side (offline, about a minute on 2 cores).",
        description="Train the paper's plain deep MLP (pure SGD, no normalisation) without SIGReg, with weak and "
        "with strong SIGReg through SIGRegTrainer, print the three-way table, and write plots and a model card. "
        "Default data: scikit-learn's handwritten digits (no network). With --dataset uoft-cs/cifar100 (or any "
        "dataset scripts/train.py accepts) it runs the mlp_sgd_{none,weak,strong} recipes at full scale. Any other "
        "option (e.g. --per_device_train_batch_size 64) is passed to scripts/train.py for the three runs.",
    )
    p.add_argument("--output_dir", default="outputs/quickstart", help="Output folder (default: outputs/quickstart).")
    p.add_argument("--dataset", default="digits",
                   help="'digits' (default: scikit-learn's 8x8 digits, offline) or a Hub id / parquet / save_to_disk "
                        "/ imagefolder path for a full-scale run.")  # fmt: skip
    p.add_argument("--epochs", type=float, default=None,
                   help="Epochs per run (default: 40 on the digits, the recipes' 400 otherwise).")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="Seed of the split, the initialisation and SIGReg.")
    p.add_argument("--train_subset", type=int, default=None,
                   help="Use a stratified subset of N training images (quick checks).")  # fmt: skip
    p.add_argument("--variants", nargs="+", default=["none", "weak", "strong"], choices=["none", "weak", "strong"],
                   help="Which runs to train (default: all three).")  # fmt: skip
    p.add_argument("--keep_checkpoints", action="store_true", help="Keep intermediate checkpoint-* folders.")


def build_parser() -> argparse.ArgumentParser:
    """The ``sigreg-hf`` argument parser (``train`` passes everything through to scripts/train.py)."""
    parser = argparse.ArgumentParser(prog="sigreg-hf", description="SIGReg for Hugging Face training.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_quickstart(sub)
    sub.add_parser("train", help="Train one configuration (same arguments as scripts/train.py).", add_help=False)

    p = sub.add_parser("collect", help="Side-by-side table (Markdown + CSV) and overlay plots of run directories.")
    p.add_argument("run_dirs", nargs="+", help="Run directories holding results.json.")
    p.add_argument("--output_dir", default=None, help="Where to write results_table.md/.csv and overlay plots.")
    p.add_argument(
        "--experiment", default=None, help="Also write summary.json (experiment name, dataset, per-run curves)."
    )
    p.add_argument("--dataset_label", default=None, help="Dataset name recorded in summary.json (e.g. cifar10).")

    p = sub.add_parser("push", help="Upload a run directory to the Hugging Face Hub.")
    p.add_argument("run_dir")
    p.add_argument("--repo_id", required=True, help="ORG/NAME of the model repository.")
    p.add_argument("--private", action="store_true", help="Create the repository private.")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN).")
    p.add_argument("--revision", default=None, help="Branch to push to (default: main).")
    p.add_argument("--commit_message", default=None)
    p.add_argument("--overwrite_readme", action="store_true",
                   help="Replace a README.md you wrote by a generated model card (default: keep yours).")  # fmt: skip

    p = sub.add_parser("evaluate", help="Top-1/top-5 of a checkpoint (Hub id or folder) on a test split.")
    add_evaluate_arguments(p)
    return parser


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``sigreg-hf evaluate`` and ``scripts/evaluate_checkpoint.py``."""
    p.add_argument("--model", required=True, help="Hub repo id ORG/NAME (cached copy with HF_HUB_OFFLINE=1) or folder.")
    p.add_argument("--dataset_name", default=None,
                   help="Dataset to evaluate on (default: the one in the checkpoint's results.json).")  # fmt: skip
    p.add_argument("--dataset_config", default=None)
    p.add_argument("--split", default="test", help="Split to evaluate (default: test).")
    p.add_argument("--image_column", default=None)
    p.add_argument("--label_column", default=None)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--max_eval_samples", type=int, default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available).")
    p.add_argument("--output_json", default=None, help='Write {"top1": ..., "top5": ...} to this file.')


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate and print; shared by the console script and scripts/evaluate_checkpoint.py."""
    try:
        result = _evaluate(args)
    except (CheckpointUnavailableError, DatasetUnavailableError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    top5 = "n/a" if result["top5"] is None else f"{result['top5']:.2f}%"
    print(f"{result['model']} on {result['dataset']} [{result['split']}, {result['num_images']} images]: "
          f"top-1 {result['top1']:.2f}%, top-5 {top5}")  # fmt: skip
    if args.output_json:
        print(f"wrote {args.output_json}")
    return 0


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    return evaluate_checkpoint(
        args.model, dataset_name=args.dataset_name, dataset_config=args.dataset_config, split=args.split,
        image_column=args.image_column, label_column=args.label_column, batch_size=args.batch_size,
        max_eval_samples=args.max_eval_samples, revision=args.revision, device=args.device,
        output_json=args.output_json,
    )  # fmt: skip


def run_push(args: argparse.Namespace) -> int:
    """Push and report; a failure prints the retry command and returns 1."""
    try:
        info = push_run_to_hub(args.run_dir, args.repo_id, private=args.private, token=args.token,
                               revision=args.revision, commit_message=args.commit_message,
                               overwrite_readme=args.overwrite_readme)  # fmt: skip
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url = getattr(info, "commit_url", None) or getattr(info, "repo_url", None) or args.repo_id
    print(f"pushed {args.run_dir} to https://huggingface.co/{args.repo_id} ({url})")
    return 0


def run_collect(args: argparse.Namespace) -> int:
    """Print the table (and write it with the overlay plots when --output_dir is given)."""
    runs, table = collect_results(args.run_dirs, args.output_dir)
    print(table)
    if args.output_dir:
        print(f"wrote {args.output_dir}/results_table.md, results_table.csv, overlay_accuracy.png, overlay_loss.png")
    if args.experiment:
        if not args.output_dir:
            raise SystemExit("error: --experiment needs --output_dir (where summary.json goes).")
        summary = experiment_summary(runs, experiment=args.experiment, dataset=args.dataset_label)
        path = Path(args.output_dir) / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sigreg-hf`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        record = cli_train.main(argv[1:])
        return 0 if record is not None or "--list_recipes" in argv else 1
    parser = build_parser()
    if argv and argv[0] == "quickstart":
        # unknown options go to every training run (e.g. --per_device_train_batch_size 64, --use_cpu true)
        args, passthrough = parser.parse_known_args(argv)
        passthrough = [a for a in passthrough if a != "--"]
        if passthrough and not passthrough[0].startswith("--"):
            parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
        run_quickstart(
            args.output_dir, dataset=args.dataset, epochs=args.epochs, seed=args.seed,
            train_subset=args.train_subset, variants=args.variants, keep_checkpoints=args.keep_checkpoints,
            extra_args=passthrough,
        )  # fmt: skip
        return 0
    args = parser.parse_args(argv)
    if args.command == "collect":
        return run_collect(args)
    if args.command == "push":
        return run_push(args)
    if args.command == "evaluate":
        return run_evaluate(args)
    raise AssertionError(args.command)  # argparse guarantees a known command


if __name__ == "__main__":
    raise SystemExit(main())

