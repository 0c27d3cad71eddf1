"""Share runs on the Hugging Face Hub: model cards, push, and download-and-evaluate.

* :func:`build_model_card` / :func:`write_model_card` - a card for a run directory from the template in
  ``model_cards/``: what the model is, the recipe and the exact reproduction command, results with a
  ``model-index`` block (dataset, split, top-1/top-5 through ``EvalResult``), the curves, how to load it,
  intended use and limits, citations of LeJEPA and of the seed's Weak-SIGReg.
* :func:`push_run_to_hub` - upload exactly the files a user needs (weights as safetensors, ``config.json``,
  the image-processing config, the modelling code for ``trust_remote_code``, ``README.md``, the plots,
  ``results.json``, ``log_history.csv`` and the recipe) in one commit. A failed upload deletes nothing and
  raises :class:`HubPushError`, whose message says how to retry.
* :func:`trainer_push_to_hub` - the same push for a ``Trainer`` (``SIGRegTrainer.push_to_hub``).
* :func:`evaluate_checkpoint` - load a checkpoint by Hub id or path with
  ``AutoModelForImageClassification.from_pretrained`` (from the local cache when ``HF_HUB_OFFLINE=1``) and
  measure top-1/top-5 on a dataset's test split.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sigreg_hf.experiments.results import (
    ACCURACY_PLOT_FILE,
    LOSS_PLOT_FILE,
    RESULTS_FILE,
    load_results,
    sigreg_mode_of,
    write_run_outputs,
)

__all__ = [
    "CARD_TEMPLATE_ENV",
    "CheckpointUnavailableError",
    "HubPushError",
    "build_model_card",
    "evaluate_checkpoint",
    "find_card_template",
    "hub_files",
    "push_run_to_hub",
    "trainer_push_to_hub",
    "write_model_card",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a card template to use instead of ``model_cards/sigreg_model_card.md``.
CARD_TEMPLATE_ENV = "SIGREG_HF_CARD_TEMPLATE"
CARD_TEMPLATE_NAME = "sigreg_model_card.md"

#: Top-level files of a run directory that go to the Hub (fnmatch patterns).
HUB_FILE_PATTERNS: tuple[str, ...] = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "*.py",  # modelling code written by save_pretrained for trust_remote_code loading
    "README.md",
    "*.png",
    RESULTS_FILE,
    "log_history.csv",
    "recipe.yaml",
)
_REQUIRED_FILES = ("config.json",)
_WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors")

_DATASET_NAMES = {
    "uoft-cs/cifar100": "CIFAR-100",
    "cifar100": "CIFAR-100",
    "uoft-cs/cifar10": "CIFAR-10",
    "cifar10": "CIFAR-10",
    "sklearn-digits": "scikit-learn handwritten digits (load_digits, 8x8)",
}

_MODEL_DESCRIPTIONS = {
    "sigreg-mlp": (
        "The seed's plain deep MLP: the flattened image goes through {num_hidden_layers} hidden "
        "Linear({hidden_size}) + ReLU layers and a linear classifier. No normalisation, dropout or residual "
        "connections, so nothing but the optimiser (and SIGReg, when on) shapes its hidden representations."
    ),
    "sigreg-resnet18-cifar": (
        "ResNet18, CIFAR variant: a 3x3 stride-1 stem, no max-pool, four stages of two BasicBlocks, global "
        "average pooling and a linear head."
    ),
    "sigreg-vit-rope": (
        "Vision Transformer (the seed's first round): patch {patch_size}, width {hidden_size}, depth "
        "{num_hidden_layers}, 2-D rotary position embeddings on queries and keys, mean-pooled head."
    ),
    "sigreg-vit-peak": (
        "Vision Transformer (the seed's tuned 'Peak' baseline): patch {patch_size}, width {hidden_size}, depth "
        "{num_hidden_layers}, CLS token with learned absolute position embeddings, stochastic depth, head on "
        "the CLS token."
    ),
}

_SIGREG_DESCRIPTIONS = {
    "none": "none (the baseline: plain cross-entropy)",
    "weak": (
        "Weak SIGReg (the seed's covariance form: a random sketch of the tapped hidden states is pushed towards "
        "identity covariance), objective (1 - a) * CE + a * SIGReg with a = {alpha}"
    ),
    "strong": (
        "Strong SIGReg (LeJEPA's Epps-Pulley characteristic-function test on random 1-D projections), objective "
        "(1 - a) * CE + a * SIGReg with a = {alpha}"
    ),
}


class CheckpointUnavailableError(OSError):
    """A checkpoint could not be loaded (not cached while offline, unknown repo, not a model folder)."""


class HubPushError(RuntimeError):
    """An upload to the Hub failed; every file is still in the run directory (the message says how to retry)."""


# --------------------------------------------------------------------------------------------------
# model card
# --------------------------------------------------------------------------------------------------
def find_card_template(template_path: str | Path | None = None) -> Path:
    """The card template: ``template_path``, ``$SIGREG_HF_CARD_TEMPLATE``, ``<repo>/model_cards/`` (editable
    installs) or ``<prefix>/share/sigreg_hf/model_cards/`` (wheel installs)."""
    candidates = [template_path, os.environ.get(CARD_TEMPLATE_ENV)]
    candidates += [Path(sys.prefix) / "share" / "sigreg_hf" / "model_cards" / CARD_TEMPLATE_NAME]
    candidates += [Path(__file__).resolve().parents[1] / "model_cards" / CARD_TEMPLATE_NAME]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        f"Model card template not found (looked for {candidates[-1]}). Pass template_path= or set "
        f"{CARD_TEMPLATE_ENV} to a copy of model_cards/{CARD_TEMPLATE_NAME} from the sigreg_hf repository."
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _count_parameters(run_dir: Path) -> int | None:
    files = sorted(p for pattern in _WEIGHT_PATTERNS for p in run_dir.glob(pattern))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open handles are not iterable
                shape = fh.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= int(dim)
                total += count
    return total


def _dataset_identity(results: Mapping[str, Any]) -> tuple[str, str]:
    """``(dataset id for model-index, human-readable name)``."""
    raw = str(results.get("dataset_id") or results.get("dataset") or "unknown")
    looks_local = raw.startswith(("/", ".", "~")) or Path(raw).exists() or raw.count("/") > 1
    dataset_id = Path(raw).name if looks_local else raw
    pretty = results.get("dataset_pretty_name") or _DATASET_NAMES.get(dataset_id) or dataset_id
    return dataset_id, str(pretty)


def _fmt_pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


_EFFECTIVE_KEYS = (
    "model_name", "dataset", "train_images", "eval_images", "train_subset", "epochs", "global_step", "optimizer",
    "learning_rate", "per_device_train_batch_size", "world_size", "mix", "randaugment_num_ops", "sigreg_mode",
    "sigreg_alpha", "seed",
)  # fmt: skip


def _settings_table(settings: Mapping[str, Any]) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    for key, value in settings.items():
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        lines.append(f"| {key} | {text.replace('|', '/')} |")
    return lines


def _recipe_table(results: Mapping[str, Any]) -> str:
    """This run's effective settings, then the recipe's full defaults (folded)."""
    effective = {key: results[key] for key in _EFFECTIVE_KEYS if results.get(key) is not None}
    lines = []
    if results.get("recipe"):
        lines.append(f"Recipe `{results['recipe']}`; the settings this run used:\n")
    lines += _settings_table(effective)
    recipe = {k: v for k, v in (results.get("recipe_config") or {}).items()
              if k not in ("published_top1", "description", "notes")}  # fmt: skip
    if recipe:
        lines += ["", "<details><summary>All recipe defaults (before the command line's overrides)</summary>", ""]
        lines += _settings_table(dict(sorted(recipe.items())))
        lines += ["", "</details>"]
    return "\n".join(lines)


def _reproduce_command(results: Mapping[str, Any]) -> str:
    if results.get("command"):
        return str(results["command"])
    parts = ["python scripts/train.py"]
    if results.get("recipe"):
        parts.append(f"--recipe {results['recipe']}")
    if results.get("dataset"):
        parts.append(f"--dataset_name {results['dataset']}")
    if results.get("seed") is not None:
        parts.append(f"--seed {results['seed']}")
    return " ".join(parts)


def _results_table(results: Mapping[str, Any]) -> str:
    final = results.get("test_accuracy_final_epoch") or {}
    best = results.get("test_accuracy_best_epoch") or {}
    lines = [
        "| | epoch | top-1 (%) | top-5 (%) |",
        "|---|---:|---:|---:|",
        f"| final epoch (these weights) | {final.get('epoch', '-')} | {_fmt_pct(results.get('final_top1'))} | "
        f"{_fmt_pct(results.get('final_top5'))} |",
        f"| best epoch (selected on test) | {best.get('epoch', results.get('best_epoch', '-'))} | "
        f"{_fmt_pct(results.get('best_top1'))} | {_fmt_pct(results.get('best_top5'))} |",
    ]
    return "\n".join(lines)


def _eval_results(results: Mapping[str, Any], dataset_id: str, dataset_name: str) -> list[Any]:
    from huggingface_hub import EvalResult

    common = {
        "task_type": "image-classification",
        "task_name": "Image Classification",
        "dataset_type": dataset_id,
        "dataset_name": dataset_name,
        "dataset_split": str(results.get("evaluation_split") or "test"),
    }
    metrics = (
        ("accuracy", "Top-1 accuracy (%), final epoch (these weights)", results.get("final_top1")),
        ("top_5_accuracy", "Top-5 accuracy (%), final epoch (these weights)", results.get("final_top5")),
        ("best_epoch_accuracy", "Top-1 accuracy (%), best epoch selected on the test set (the seed's protocol)",
         results.get("best_top1")),
    )  # fmt: skip
    return [
        EvalResult(metric_type=metric_type, metric_name=name, metric_value=round(float(value), 4), **common)
        for metric_type, name, value in metrics
        if value is not None
    ]


def build_model_card(
    run_dir: str | Path,
    *,
    repo_id: str | None = None,
    results: Mapping[str, Any] | None = None,
    comparison_markdown: str | None = None,
    comparison_plots: Sequence[str] = (),
    template_path: str | Path | None = None,
    extra_limits: str = "",
    model_name: str | None = None,
    plot_prefix: str = "",
) -> Any:
    """A ``huggingface_hub.ModelCard`` for the run in ``run_dir`` (reads ``results.json`` and ``config.json``).

    Args:
        run_dir: a run directory written by ``scripts/train.py`` or the quickstart.
        repo_id: the Hub repository the card is for (used in the loading snippets); default: the folder name.
        results: the results dict (default: ``run_dir/results.json``).
        comparison_markdown: an optional table of related runs (e.g. baseline / weak / strong) to include.
        comparison_plots: paths (relative to the card) of overlay plots to show with that table.
        template_path: a Jinja template (default :func:`find_card_template`).
        extra_limits: more bullet points for "Intended use and limits" (Markdown).
        model_name: the card title and ``model-index`` name (default: the repository name).
        plot_prefix: prefix of the run's plot paths in the card (e.g. ``"weak/"`` for a card saved one
            folder above the run).
    """
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    results = dict(results) if results is not None else load_results(run_dir)
    config = _read_json(run_dir / "config.json")
    repo_id = repo_id or run_dir.resolve().name
    model_type = str(config.get("model_type") or results.get("model_name") or "unknown")
    mode = sigreg_mode_of(results)
    alpha = results.get("sigreg_alpha")
    dataset_id, dataset_pretty = _dataset_identity(results)
    name = model_name or repo_id.split("/")[-1]
    num_params = _count_parameters(run_dir)
    num_labels = config.get("num_labels") or len(config.get("id2label") or {}) or results.get("num_classes") or "?"
    if "image_size" in config:
        input_shape = f"{config.get('in_chans', 3)}x{config['image_size']}x{config['image_size']}"
    else:
        input_shape = "see config.json"
    description = _MODEL_DESCRIPTIONS.get(model_type, "An image classifier ({model_type}).")
    try:
        description = description.format(**{**config, "model_type": model_type})
    except (KeyError, IndexError):
        description = description.split("{")[0].strip() or f"An image classifier ({model_type})."
    sigreg_text = _SIGREG_DESCRIPTIONS[mode].format(alpha=alpha)
    recipe_label = f" with recipe `{results['recipe']}`" if results.get("recipe") else ""
    summary = (
        f"A {model_type} image classifier trained from scratch on {dataset_pretty}{recipe_label}, "
        f"SIGReg: **{mode}**{f' (alpha {alpha:g})' if mode != 'none' and alpha else ''}. "
        f"Test top-1: **{_fmt_pct(results.get('final_top1'))}%** at the final epoch, "
        f"{_fmt_pct(results.get('best_top1'))}% at the best epoch."
    )
    published = results.get("published_top1")
    published_note = ""
    if published is not None:
        diff = results.get("best_minus_published_top1")
        published_note = (
            f"- The seed's published top-1 for this recipe (CIFAR-100, best epoch): **{published:.2f}%**"
            + (f"; this run's best epoch differs by {diff:+.2f} points." if diff is not None else ".")
        )
    comparison = ""
    if comparison_markdown:
        comparison = "### Compared with the other runs of the same recipe family\n\n" + comparison_markdown.strip()
        for plot in comparison_plots:
            comparison += f"\n\n![{Path(plot).stem.replace('_', ' ')}]({plot})"
    wall = results.get("wall_seconds")
    ips = results.get("images_per_second")
    tags = ["image-classification", "sigreg", "lejepa", "sigreg-hf", f"sigreg-{mode}", model_type]
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=list(dict.fromkeys(tags)),
        datasets=[dataset_id] if "/" in dataset_id else None,
        metrics=["accuracy"],
        model_name=name,
        eval_results=_eval_results(results, dataset_id, dataset_pretty) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(find_card_template(template_path)),
        model_name=name,
        model_summary=summary,
        model_description=description,
        model_type=model_type,
        num_parameters=f"{num_params:,}" if num_params is not None else "?",
        num_labels=num_labels,
        input_shape=input_shape,
        sigreg_description=sigreg_text,
        sigreg_hf_version=(results.get("library_versions") or {}).get("sigreg_hf", ""),
        recipe_table=_recipe_table(results),
        reproduce_command=_reproduce_command(results),
        dataset_split=results.get("evaluation_split") or "test",
        dataset_pretty_name=dataset_pretty,
        dataset_id=results.get("dataset") or dataset_id,
        eval_images=results.get("eval_images") or "?",
        results_table=_results_table(results),
        published_note=published_note,
        wall_time=f"{wall:,.0f} s" if wall is not None else "not recorded",
        images_per_second=f"{ips:,.0f}" if ips is not None else "?",
        comparison_section=comparison,
        loss_plot=plot_prefix + LOSS_PLOT_FILE,
        accuracy_plot=plot_prefix + ACCURACY_PLOT_FILE,
        repo_id=repo_id,
        extra_limits=extra_limits,
    )


def write_model_card(run_dir: str | Path, *, filename: str = "README.md", **kwargs: Any) -> Path:
    """Build the card (see :func:`build_model_card`) and save it as ``run_dir/README.md``."""
    card = build_model_card(run_dir, **kwargs)
    path = Path(run_dir) / filename
    card.save(path)
    return path


# --------------------------------------------------------------------------------------------------
# push
# --------------------------------------------------------------------------------------------------
def hub_files(run_dir: str | Path) -> list[str]:
    """The files of ``run_dir`` that :func:`push_run_to_hub` uploads (top level only, sorted).

    Raises:
        ValueError: the folder has no ``config.json`` or no safetensors weights (a ``pytorch_model.bin``
            checkpoint must be re-saved with ``save_pretrained``, which writes safetensors).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"Run directory {run_dir} does not exist.")
    names = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    selected = [n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in HUB_FILE_PATTERNS)]
    missing = [n for n in _REQUIRED_FILES if n not in selected]
    if not any(fnmatch.fnmatch(n, p) for n in selected for p in _WEIGHT_PATTERNS):
        missing.append("model.safetensors")
    if missing:
        hint = (
            " It holds pytorch_model.bin: load it and call save_pretrained() to write safetensors."
            if "pytorch_model.bin" in names
            else " Train with scripts/train.py (it saves the final model) or call model.save_pretrained(run_dir)."
        )
        raise ValueError(f"{run_dir} is not a complete checkpoint: missing {missing}.{hint}")
    if "preprocessor_config.json" not in selected:
        logger.warning("%s has no preprocessor_config.json: users will have to rebuild the image processor.", run_dir)
    return selected


def _retry_hint(run_dir: Path, repo_id: str, private: bool) -> str:
    flag = " --private" if private else ""
    return f"python scripts/push_to_hub.py {run_dir} --repo_id {repo_id}{flag}"


def push_run_to_hub(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    write_card: bool = True,
    api: Any = None,
) -> Any:
    """Create (if needed) the model repository ``repo_id`` and upload the run's files in one commit.

    Args:
        run_dir: the run directory (checkpoint + outputs).
        repo_id: ``"ORG/NAME"`` (or ``"NAME"`` for the token's user).
        private: create the repository private (no effect on an existing one).
        token: a Hub token (default: the logged-in one / ``HF_TOKEN``).
        revision: branch to commit to (default ``main``).
        commit_message: default ``"Upload <run name> (sigreg_hf)"``.
        write_card: (re)write ``README.md`` for ``repo_id`` before uploading (default True).
        api: a ``huggingface_hub.HfApi`` (default: a new one with ``token``).

    Returns:
        The ``CommitInfo`` of the upload.

    Raises:
        ValueError: the folder is not a complete checkpoint (see :func:`hub_files`).
        HubPushError: the Hub refused or could not be reached; nothing local was changed besides README.md.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    run_dir = Path(run_dir)
    hub_files(run_dir)  # validate before touching anything
    if write_card:
        write_model_card(run_dir, repo_id=repo_id)
    files = hub_files(run_dir)
    api = api if api is not None else HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
        target = getattr(repo_url, "repo_id", None) or repo_id
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(run_dir / name)) for name in files]
        info = api.create_commit(
            repo_id=target,
            operations=operations,
            commit_message=commit_message or f"Upload {run_dir.name} (sigreg_hf)",
            repo_type="model",
            revision=revision,
            token=token,
        )
    except Exception as err:  # noqa: BLE001 - any Hub/network failure: keep the files, explain the retry
        raise HubPushError(
            f"Upload of {run_dir} to the Hub repository {repo_id!r} failed ({type(err).__name__}: {err}). "
            f"Nothing was deleted: all {len(files)} files are still in {run_dir}. Check the network and your "
            f"token (`hf auth login` or HF_TOKEN), then retry with:\n    {_retry_hint(run_dir, repo_id, private)}"
        ) from err
    logger.info("Pushed %d files from %s to %s", len(files), run_dir, repo_id)
    return info


def trainer_push_to_hub(
    trainer: Any,
    *,
    repo_id: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = "End of training",
    api: Any = None,
) -> Any:
    """``Trainer.push_to_hub`` for sigreg runs: save, write the run outputs and card, push the same files.

    Saves the model (and the trainer's ``processing_class``) to ``trainer.args.output_dir``, writes
    ``results.json`` / plots / CSV from ``trainer.state.log_history`` when the folder has no complete
    ``results.json`` yet (an existing one is kept as the base record), then calls :func:`push_run_to_hub`.
    ``repo_id`` defaults to ``args.hub_model_id`` and then the output folder's name; ``private``, ``token``
    and ``revision`` to ``args.hub_private_repo`` / ``hub_token`` / ``hub_revision``. Returns the
    ``CommitInfo`` on the main process and ``None`` on the others.
    """
    args = trainer.args
    trainer.save_model(args.output_dir)
    if not trainer.is_world_process_zero():
        return None
    out = Path(args.output_dir)
    existing = load_results(out) if (out / RESULTS_FILE).is_file() else None
    if existing is None or "test_accuracy_final_epoch" not in existing:
        write_run_outputs(
            out,
            log_history=trainer.state.log_history,
            recipe=(existing or {}).get("recipe"),
            seed=args.seed,
            epochs=trainer.state.epoch,
            sigreg_mode=getattr(args, "sigreg_mode", "none"),
            sigreg_alpha=getattr(args, "sigreg_alpha", None),
            record=existing,
        )
    repo_id = repo_id or getattr(trainer, "hub_model_id", None) or args.hub_model_id or out.resolve().name
    return push_run_to_hub(
        out,
        repo_id,
        private=bool(args.hub_private_repo) if private is None else private,
        token=token if token is not None else args.hub_token,
        revision=revision if revision is not None else getattr(args, "hub_revision", None),
        commit_message=commit_message,
        api=api,
    )


# --------------------------------------------------------------------------------------------------
# download and evaluate
# --------------------------------------------------------------------------------------------------
def _processor_settings(model_id: str, revision: str | None) -> dict[str, Any]:
    """``image_mean``, ``image_std`` and ``size`` from the checkpoint's ``preprocessor_config.json``."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"Could not load the image-processing config (preprocessor_config.json) of {model_id!r}: {err}. "
            "Pass mean=..., std=... (and image_size=...) explicitly."
        ) from err
    size = getattr(processor, "size", None) or {}
    size = dict(size) if not isinstance(size, dict) else size
    return {
        "mean": list(processor.image_mean),
        "std": list(processor.image_std),
        "image_size": size.get("height") or size.get("shortest_edge"),
    }


def _checkpoint_results(model_id: str, revision: str | None) -> dict[str, Any]:
    """The checkpoint's ``results.json`` (local folder or Hub/cache), or ``{}``."""
    path = Path(model_id)
    if path.is_dir():
        return _read_json(path / RESULTS_FILE)
    try:
        from huggingface_hub import hf_hub_download

        return _read_json(Path(hf_hub_download(model_id, RESULTS_FILE, revision=revision)))
    except Exception:  # noqa: BLE001 - the dataset then has to be given explicitly
        return {}


def _builtin_dataset(name: str, recorded: Mapping[str, Any]) -> str:
    """Materialise the quickstart's scikit-learn digits split (same seed and fraction as the run) if asked."""
    from sigreg_hf.experiments.quickstart import DIGITS_NAMES, DIGITS_TEST_FRACTION, digits_dataset

    if name not in DIGITS_NAMES:
        return name
    split = dict(recorded.get("digits_split") or {})
    split.setdefault("test_fraction", DIGITS_TEST_FRACTION)
    split.setdefault("seed", 0)
    from huggingface_hub.constants import HF_HOME

    tag = f"f{split['test_fraction']}_s{split['seed']}_n{split.get('train_subset')}"
    folder = Path(HF_HOME) / "sigreg_hf" / "digits" / tag
    return str(digits_dataset(folder, test_fraction=float(split["test_fraction"]), seed=int(split["seed"]),
                              train_subset=split.get("train_subset")))  # fmt: skip


def evaluate_checkpoint(
    model: str,
    *,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "test",
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 256,
    max_eval_samples: int | None = None,
    revision: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int | None = None,
    device: str | None = None,
    output_json: str | Path | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (percent) of a checkpoint on a dataset split.

    Args:
        model: a Hub repo id (``ORG/NAME``; downloaded once, then read from the cache - with
            ``HF_HUB_OFFLINE=1`` only the cache is used) or a local folder.
        dataset_name: anything :func:`sigreg_hf.experiments.data.load_image_classification_dataset` accepts, or
            ``"sklearn-digits"`` (the quickstart's split, rebuilt from scikit-learn); default: the ``dataset``
            recorded in the checkpoint's ``results.json``.
        split: the split to evaluate (default ``"test"``).
        mean, std, image_size: override the checkpoint's image-processing config.
        output_json: also write ``{"top1": ..., "top5": ...}`` (plus context) to this file.

    Returns:
        ``{"top1", "top5", "num_images", "model", "dataset", "split"}``.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModelForImageClassification

    import sigreg_hf.models  # noqa: F401 - registers the sigreg-* model types with the Auto classes
    from sigreg_hf.experiments.data import prepare_image_classification_data
    from sigreg_hf.experiments.metrics import load_metric

    try:
        net = AutoModelForImageClassification.from_pretrained(model, revision=revision)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        where = (
            "HF_HUB_OFFLINE=1 is set and it is not in the Hub cache "
            f"({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'}): download it once online, or "
            "pass a local folder"
            if offline
            else "check the repo id (ORG/NAME), your access to it, the network, or pass a local folder"
        )
        raise CheckpointUnavailableError(f"Cannot load the checkpoint {model!r}: {where}. ({err})") from err
    if mean is None or std is None or image_size is None:
        settings = _processor_settings(model, revision)
        mean = mean if mean is not None else settings["mean"]
        std = std if std is not None else settings["std"]
        image_size = image_size or settings["image_size"] or getattr(net.config, "image_size", 32)
    recorded = _checkpoint_results(model, revision)
    dataset_name = dataset_name or recorded.get("dataset")
    if not dataset_name:
        raise ValueError(f"No dataset recorded for {model!r}: pass dataset_name (e.g. uoft-cs/cifar100).")
    data_source = _builtin_dataset(str(dataset_name), recorded)
    data = prepare_image_classification_data(
        data_source, dataset_config=dataset_config, image_column=image_column, label_column=label_column,
        train_split=split, eval_split=split, max_eval_samples=max_eval_samples, decode_cache=False,
        image_size=int(image_size), mean=list(mean), std=list(std),
    )  # fmt: skip
    assert data.eval is not None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device).eval()
    loader = DataLoader(data.eval, batch_size=batch_size, collate_fn=data.collator, shuffle=False)
    logits, labels = [], []
    with torch.inference_mode():
        for batch in loader:
            out = net(pixel_values=batch["pixel_values"].to(device))
            logits.append(out.logits.float().cpu().numpy())
            labels.append(batch["labels"].numpy())
    scores = np.concatenate(logits)
    refs = np.concatenate(labels).astype(np.int64)
    ks = [k for k in (1, 5) if k <= scores.shape[1]]
    metric = load_metric("top_k_accuracy").compute(predictions=scores, references=refs, k=ks)
    result = {
        "top1": 100.0 * metric["top1"],
        "top5": 100.0 * metric["top5"] if "top5" in metric else None,
        "num_images": int(len(refs)),
        "model": str(model),
        "dataset": str(dataset_name),
        "split": split,
    }
    if output_json is not None:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        with open(output_json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return result
