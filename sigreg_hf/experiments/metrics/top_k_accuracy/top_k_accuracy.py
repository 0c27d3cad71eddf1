"""Top-k accuracy as an ``evaluate`` metric module, shipped with sigreg_hf and loaded by path.

Load it with ``sigreg_hf.experiments.metrics.load_metric()`` (or ``evaluate.load(<path to this folder>)``): no
network is needed. ``predictions`` are per-example class scores (logits or probabilities, one row of
``num_classes`` floats per example); ``references`` are integer class indices.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy: the fraction of examples whose true class is among the k highest-scoring classes.
Top-1 accuracy is the usual accuracy of the arg-max prediction. Ties are broken towards the lower
class index (a stable sort of the negated scores), so the result is deterministic.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): class scores, shape [num_examples, num_classes].
    references (`list` of `int`): true class indices, shape [num_examples].
    k (`int` or `list` of `int`, defaults to `[1, 5]`): the k values to report; each must be >= 1.
        A k larger than the number of classes counts every example as correct.

Returns:
    A dict with one entry `top{k}` per requested k: the accuracy as a fraction in [0, 1].

Examples:
    >>> metric = sigreg_hf.experiments.metrics.load_metric()
    >>> metric.compute(predictions=[[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], references=[1, 2], k=[1, 2])
    {'top1': 0.5, 'top2': 0.5}
"""

_CITATION = ""


def top_k_accuracy(scores, labels, ks):
    """Top-k accuracies (fractions) of ``scores [N, C]`` against ``labels [N]`` for every k in ``ks``."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2:
        raise ValueError(f"predictions must be class scores of shape [N, num_classes]; got shape {scores.shape}.")
    if labels.shape != (scores.shape[0],):
        raise ValueError(
            f"references must have shape [N] = [{scores.shape[0]}] to match the predictions; got {labels.shape}."
        )
    if scores.shape[0] == 0:
        raise ValueError("top-k accuracy of an empty set of predictions is undefined; pass at least one example.")
    num_classes = scores.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"references must be class indices in [0, {num_classes}); got values in [{labels.min()}, {labels.max()}]."
        )
    # Rank of the true class = number of classes scoring strictly higher, plus equal scores with a lower index.
    true_scores = scores[np.arange(scores.shape[0]), labels][:, None]
    higher = (scores > true_scores).sum(axis=1)
    tied_before = ((scores == true_scores) & (np.arange(num_classes)[None, :] < labels[:, None])).sum(axis=1)
    rank = higher + tied_before
    results = {}
    for k in ks:
        results[f"top{k}"] = float((rank < k).mean())
    return results


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    """Top-k accuracy of class scores against integer labels."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=[],
        )

    def _compute(self, predictions, references, k=(1, 5)):
        ks = [k] if isinstance(k, int) else list(k)
        if not ks or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ks):
            raise ValueError(f"k must be a positive integer or a list of them; got {k!r}.")
        return top_k_accuracy(predictions, references, ks)
