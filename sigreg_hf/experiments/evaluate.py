"""Evaluate a checkpoint (Hub id or folder) on a dataset split: ``Trainer.evaluate()`` with the same
``compute_metrics`` as training (top-1 / top-5 in percent).

The checkpoint loads with ``AutoModelForImageClassification.from_pretrained`` (from the local cache when
``HF_HUB_OFFLINE=1``); the evaluation transform is rebuilt from its ``preprocessor_config.json``; the dataset
defaults to the one its ``results.json`` records (the quickstart's scikit-learn digits split is rebuilt).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, hf_hub_download
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

import sigreg_hf.models  # noqa: F401 - registers the sigreg-* model types with the Auto classes
from sigreg_hf.experiments.data import DataArguments, prepare_image_classification_data
from sigreg_hf.experiments.data.digits import DIGITS_NAMES, DIGITS_TEST_FRACTION, digits_dataset
from sigreg_hf.experiments.metrics import build_compute_metrics, preprocess_logits_for_metrics
from sigreg_hf.experiments.record import RESULTS_FILE, RunRecord, as_results

__all__ = ["CheckpointUnavailableError", "evaluate_checkpoint"]


class CheckpointUnavailableError(OSError):
    """A checkpoint could not be loaded (not cached while offline, unknown repo, not a model folder)."""


def _processor_settings(model_id: str, revision: str | None) -> dict[str, Any]:
    """``image_mean``, ``image_std`` and ``size`` from the checkpoint's ``preprocessor_config.json``."""
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
    """The ``results.json`` view of the checkpoint's record (local folder or Hub/cache), or ``{}``."""
    try:
        path = Path(model_id) if Path(model_id).is_dir() else Path(hf_hub_download(model_id, RESULTS_FILE,
                                                                                  revision=revision))
        return dict(as_results(RunRecord.load(path)))
    except Exception:  # noqa: BLE001 - no record: the dataset then has to be given explicitly
        return {}


def _builtin_dataset(name: str, recorded: Mapping[str, Any]) -> str:
    """Materialise the quickstart's scikit-learn digits split (same seed and fraction as the run) if asked."""
    if name not in DIGITS_NAMES:
        return name
    split = dict(recorded.get("digits_split") or {})
    split.setdefault("test_fraction", DIGITS_TEST_FRACTION)
    split.setdefault("seed", 0)
    tag = f"f{split['test_fraction']}_s{split['seed']}_n{split.get('train_subset')}"
    folder = Path(constants.HF_HOME) / "sigreg_hf" / "digits" / tag
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
        batch_size, device: of the evaluation (default device: CUDA when available).

    Returns:
        ``{"top1", "top5", "num_images", "model", "dataset", "split"}``.
    """
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
        DataArguments(
            dataset_name=data_source, dataset_config=dataset_config, image_column=image_column,
            label_column=label_column, train_split=split, eval_split=split, max_eval_samples=max_eval_samples,
            decode_cache=False, image_size=int(image_size), mean=list(mean), std=list(std),
        )
    )  # fmt: skip
    if data.eval is None:
        raise ValueError(f"The dataset {dataset_name!r} has no split {split!r} to evaluate on.")
    use_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    with tempfile.TemporaryDirectory(prefix="sigreg_hf_eval_") as scratch:
        args = TrainingArguments(
            output_dir=scratch, per_device_eval_batch_size=batch_size, use_cpu=use_cpu, report_to="none",
            remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(
            model=net, args=args, eval_dataset=data.eval, data_collator=data.collator,
            compute_metrics=build_compute_metrics(), preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )  # fmt: skip
        metrics = trainer.evaluate()
    result = {
        "top1": metrics["eval_top1"],
        "top5": metrics.get("eval_top5"),
        "num_images": len(data.eval),
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
