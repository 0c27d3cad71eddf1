"""Evaluation metrics shipped inside the package as ``evaluate`` modules, loaded by path (never the network).

``evaluate.load("accuracy")`` fetches a script from the Hub; these modules live next to this file, so
evaluation works offline. Each module is a folder ``<name>/<name>.py`` defining an ``evaluate.Metric``.

Example::

    from sigreg_hf.experiments.metrics import build_compute_metrics, load_metric
    metric = load_metric("top_k_accuracy")
    metric.compute(predictions=logits, references=labels, k=[1, 5])   # {"top1": 0.53, "top5": 0.81}
    trainer = SIGRegTrainer(..., compute_metrics=build_compute_metrics())  # logs eval_top1 / eval_top5 (percent)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METRICS_DIR",
    "available_metrics",
    "build_compute_metrics",
    "load_metric",
    "metric_path",
    "preprocess_logits_for_metrics",
    "ranked_indices_to_scores",
]

#: Folder holding the metric modules (one sub-folder per metric).
METRICS_DIR = Path(__file__).resolve().parent


def available_metrics() -> list[str]:
    """Names of the metric modules shipped with the package."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if p.is_dir() and (p / f"{p.name}.py").is_file())


def metric_path(name: str = "top_k_accuracy") -> str:
    """Filesystem path of the metric module folder ``name`` (what ``evaluate.load`` takes)."""
    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise ValueError(f"Unknown metric {name!r}; the package ships {available_metrics()}.")
    return str(folder)


def load_metric(name: str = "top_k_accuracy", **kwargs: Any) -> Any:
    """``evaluate.load`` of a metric shipped with the package, by path; kept in memory by default.

    Args:
        name: one of :func:`available_metrics` (default ``"top_k_accuracy"``).
        kwargs: passed to ``evaluate.load`` (e.g. ``experiment_id``, ``process_id``, ``num_process``).
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(metric_path(name), **kwargs)


def build_compute_metrics(top_k: Sequence[int] = (1, 5)) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` function for ``Trainer``: top-k accuracy of the logits, in percent.

    ``predictions`` may be logits ``[N, num_classes]`` or ranked class indices ``[N, k]`` (what
    :func:`preprocess_logits_for_metrics` keeps, to save memory in evaluation).
    The Trainer logs the returned keys with the ``eval_`` prefix: ``eval_top1``, ``eval_top5`` (percent,
    e.g. ``53.21``). ks above the number of classes are dropped (top-5 of a 3-class problem is
    meaningless). Labels must be hard class indices (evaluation batches are never mixed).
    """
    ks = [int(k) for k in top_k]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"top_k must list positive integers; got {list(top_k)!r}.")
    metric = load_metric("top_k_accuracy")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions = getattr(eval_pred, "predictions", None)
        labels = getattr(eval_pred, "label_ids", None)
        if predictions is None and isinstance(eval_pred, (tuple, list)):
            predictions, labels = eval_pred[0], eval_pred[1]
        if isinstance(predictions, (tuple, list)):  # (logits, hidden_states, ...) from some models
            predictions = predictions[0]
        predictions = np.asarray(predictions)
        labels = np.asarray(labels)
        if labels.ndim == 2:  # one-hot / soft targets: score against the dominant class
            labels = labels.argmax(axis=-1)
        labels = labels.astype(np.int64)
        if np.issubdtype(predictions.dtype, np.integer):
            # ranked class indices (e.g. from preprocess_logits_for_metrics keeping logits.topk(5).indices)
            logits = ranked_indices_to_scores(predictions, labels)
            usable = [k for k in ks if k <= predictions.shape[-1]]
        else:
            logits = predictions.astype(np.float32)
            usable = [k for k in ks if k <= logits.shape[-1]]
        scores = metric.compute(predictions=logits, references=labels, k=usable)
        return {name: round(100.0 * value, 4) for name, value in scores.items()}

    return compute_metrics


def ranked_indices_to_scores(indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Scores ``[N, C]`` whose ranking reproduces ranked class ``indices [N, k]`` (best first).

    Classes outside the top k all score 0, below every kept class, so top-j accuracy for j <= k is exact.
    """
    indices = np.asarray(indices, dtype=np.int64)
    num_classes = int(max(indices.max(initial=0), np.asarray(labels).max(initial=0))) + 1
    k = indices.shape[-1]
    scores = np.zeros((indices.shape[0], num_classes), dtype=np.float32)
    np.put_along_axis(scores, indices, np.arange(k, 0, -1, dtype=np.float32)[None, :].repeat(len(indices), 0), 1)
    return scores


def preprocess_logits_for_metrics(logits: Any, labels: Any, top_k: int = 5) -> Any:
    """``Trainer(preprocess_logits_for_metrics=...)``: keep only the top-``top_k`` class indices per example."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices
