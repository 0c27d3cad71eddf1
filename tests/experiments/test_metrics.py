"""The top-k accuracy metric shipped as an `evaluate` module and loaded by path (no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sigreg_hf.experiments.metrics import (
    available_metrics,
    build_compute_metrics,
    load_metric,
    metric_path,
    preprocess_logits_for_metrics,
    ranked_indices_to_scores,
)


def _reference_topk(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Independent reference: stable arg-sort (ties towards the lower index), true label among the first k."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((order == labels[:, None]).any(axis=1).mean())


def test_shipped_module_loads_offline_by_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    assert "top_k_accuracy" in available_metrics()
    metric = load_metric("top_k_accuracy")
    assert metric.name == "top_k_accuracy"
    out = metric.compute(predictions=[[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], references=[1, 2], k=[1, 2])
    assert out == {"top1": 0.5, "top2": 0.5}


def test_module_file_keeps_one_import_per_line():
    """evaluate's dependency check misreads 'import a, b' / 'from x import (...)' lines."""
    source = (metric_path() + "/top_k_accuracy.py").replace("//", "/")
    with open(source, encoding="utf-8") as fh:
        for line in fh:
            stripped = line.strip()
            if stripped.startswith("import "):
                assert "," not in stripped, line


@pytest.mark.parametrize("num_classes", [3, 10, 100])
def test_matches_independent_reference_with_ties(num_classes):
    rng = np.random.default_rng(num_classes)
    scores = rng.integers(0, 4, size=(400, num_classes)).astype(np.float32)  # many ties on purpose
    labels = rng.integers(0, num_classes, size=400)
    ks = [k for k in (1, 2, 5) if k <= num_classes]
    out = load_metric().compute(predictions=scores, references=labels, k=ks)
    for k in ks:
        assert out[f"top{k}"] == pytest.approx(_reference_topk(scores, labels, k), abs=1e-12)


def test_perfect_and_worst_predictions():
    labels = np.arange(10) % 5
    perfect = np.eye(5)[labels] * 10.0
    assert load_metric().compute(predictions=perfect, references=labels, k=[1, 5]) == {"top1": 1.0, "top5": 1.0}
    worst = -perfect
    out = load_metric().compute(predictions=worst, references=labels, k=[1, 4, 5])
    assert out == {"top1": 0.0, "top4": 0.0, "top5": 1.0}


@pytest.mark.parametrize(
    ("predictions", "references", "kwargs", "match"),
    [
        ([[0.1, 0.2]], [2], {}, r"class indices in \[0, 2\)"),
        ([[0.1, 0.2]], [0], {"k": 0}, "positive integer"),
        ([[0.1, 0.2]], [-1], {}, "class indices"),
    ],
)
def test_bad_inputs_raise_clear_errors(predictions, references, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_metric().compute(predictions=predictions, references=references, **kwargs)


def test_compute_metrics_for_trainer_in_percent_from_logits_and_from_ranked_indices():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 20, generator=generator)
    labels = torch.randint(0, 20, (500,), generator=generator)
    logits[:200] += 5 * torch.nn.functional.one_hot(labels[:200], 20)  # 40%+ top-1
    compute = build_compute_metrics()
    from_logits = compute((logits.numpy(), labels.numpy()))
    ranked = preprocess_logits_for_metrics(logits, labels)
    from_ranked = compute((ranked.numpy(), labels.numpy()))
    expected1 = 100 * _reference_topk(logits.numpy(), labels.numpy(), 1)
    expected5 = 100 * _reference_topk(logits.numpy(), labels.numpy(), 5)
    assert from_logits == pytest.approx({"top1": expected1, "top5": expected5}, abs=1e-3)
    assert from_ranked == pytest.approx(from_logits, abs=1e-3)
    assert from_logits["top1"] > 40


def test_compute_metrics_drops_k_above_num_classes_and_accepts_one_hot_labels():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]], dtype=np.float32)
    one_hot = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    assert build_compute_metrics()((logits, one_hot)) == {"top1": 50.0}


def test_ranked_indices_to_scores_reproduces_the_ranking():
    indices = np.array([[3, 1, 0], [2, 0, 1]])
    scores = ranked_indices_to_scores(indices, np.array([4, 0]))
    assert scores.shape == (2, 5)
    assert np.array_equal(np.argsort(-scores, axis=1, kind="stable")[:, :3], indices)


def test_unknown_metric_names_the_shipped_ones():
    with pytest.raises(ValueError, match="top_k_accuracy"):
        metric_path("accuracy")
