"""What a run leaves behind: ``results.json``, the log history as CSV, and loss/accuracy plots.

:func:`write_run_outputs` is called once at the end of a run (``scripts/train.py``, the quickstart) and
writes into the run's output directory:

* ``results.json`` - recipe, seed, epochs, the final-epoch and the best-epoch test top-1/top-5 (labelled;
  percent), test top-1 for every epoch, task and SIGReg losses, wall time, images/s, library versions;
* ``log_history.csv`` - every entry of ``trainer.state.log_history``, one row each;
* ``loss_curves.png`` - train/test loss with the task and SIGReg parts, per epoch;
* ``accuracy_curves.png`` - test top-1/top-5 per epoch (best epoch marked, the seed's number if known);
* ``recipe.yaml`` - the recipe's settings, when given as a mapping.

:func:`collect_results` puts several runs side by side with the seed's published numbers (one Markdown
table, a CSV, and overlay plots of baseline / weak / strong); ``scripts/collect_results.py`` is its CLI.

Plots use matplotlib's object-oriented API with the Agg canvas, so no display is needed and the caller's
pyplot backend is never changed.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_FILE",
    "collect_results",
    "epoch_table",
    "experiment_summary",
    "group_runs_by_setting",
    "library_versions",
    "load_results",
    "plot_accuracy_curves",
    "plot_loss_curves",
    "plot_overlay",
    "results_table_markdown",
    "sigreg_mode_of",
    "write_log_history_csv",
    "write_run_outputs",
]

RESULTS_FILE = "results.json"
LOG_CSV_FILE = "log_history.csv"
LOSS_PLOT_FILE = "loss_curves.png"
ACCURACY_PLOT_FILE = "accuracy_curves.png"
RECIPE_FILE = "recipe.yaml"
SCHEMA_VERSION = 1

#: Distributions whose versions every results.json records.
_LIBRARIES = (
    "sigreg_hf", "torch", "torchvision", "transformers", "accelerate", "datasets", "evaluate", "timm",
    "huggingface-hub", "safetensors", "numpy", "scikit-learn", "matplotlib",
)  # fmt: skip

_MODE_STYLE = {"none": ("#444444", "baseline, no SIGReg"), "weak": ("#1f77b4", "weak SIGReg"),
               "strong": ("#d62728", "strong SIGReg")}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on (plus Python), ``"not installed"`` if absent."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def sigreg_mode_of(results: Mapping[str, Any]) -> str:
    """``"none"`` / ``"weak"`` / ``"strong"`` for a results dict (its field, else the recipe-name suffix)."""
    mode = results.get("sigreg_mode")
    if mode in _MODE_STYLE:
        return str(mode)
    match = re.search(r"_(none|weak|strong)$", str(results.get("recipe") or ""))
    return match.group(1) if match else "none"


# --------------------------------------------------------------------------------------------------
# log history -> per-epoch table
# --------------------------------------------------------------------------------------------------
def _epoch_index(epoch: Any) -> int | None:
    """The 1-based epoch a log entry belongs to: a log at fractional epoch 0.4 or exactly 1.0 is epoch 1."""
    value = _finite(epoch)
    if value is None:
        return None
    return max(1, math.ceil(value - 1e-4))


def epoch_table(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch from ``trainer.state.log_history``.

    Keys per row: ``epoch``; ``train_loss``, ``train_task_loss``, ``train_sigreg_loss`` (means of the
    training logs of that epoch; the task loss equals the total loss for a run without SIGReg);
    ``train_top1`` (percent, on augmented training batches, when the trainer logs ``train_top1`` or, under
    MixUp/CutMix, ``train_top1_vs_dominant_label``);
    ``test_loss``, ``test_task_loss``, ``test_sigreg_loss``, ``test_top1``, ``test_top5`` (the evaluation at
    the end of the epoch; accuracies in percent). Missing quantities are ``None``. Evaluations that are not
    at an epoch boundary (``eval_strategy="steps"``) are attributed to the epoch they fall in; the last one
    of an epoch wins.
    """
    train: dict[int, dict[str, list[float | None]]] = {}
    evals: dict[int, Mapping[str, Any]] = {}
    for entry in log_history:
        if "eval_loss" in entry or any(k.startswith("eval_top") for k in entry):
            ep = _epoch_index(entry.get("epoch"))
            if ep is not None:
                evals[ep] = entry
        elif "loss" in entry:
            ep = _epoch_index(entry.get("epoch"))
            if ep is None:
                continue
            bucket = train.setdefault(ep, {"loss": [], "task": [], "sigreg": [], "top1": []})
            loss = _finite(entry.get("loss"))
            bucket["loss"].append(loss)
            bucket["task"].append(_finite(entry["task_loss"]) if "task_loss" in entry else loss)
            bucket["sigreg"].append(_finite(entry.get("sigreg_loss")))
            bucket["top1"].append(_finite(entry.get("train_top1", entry.get("train_top1_vs_dominant_label"))))
    rows = []
    for ep in sorted(set(train) | set(evals)):
        bucket = train.get(ep, {"loss": [], "task": [], "sigreg": [], "top1": []})
        ev = evals.get(ep, {})
        eval_loss = _finite(ev.get("eval_loss"))
        rows.append(
            {
                "epoch": ep,
                "train_loss": _mean(bucket["loss"]),
                "train_task_loss": _mean(bucket["task"]),
                "train_sigreg_loss": _mean(bucket["sigreg"]),
                "train_top1": _mean(bucket["top1"]),
                "test_loss": eval_loss,
                "test_task_loss": _finite(ev["eval_task_loss"]) if "eval_task_loss" in ev else eval_loss,
                "test_sigreg_loss": _finite(ev.get("eval_sigreg_loss")),
                "test_top1": _finite(ev.get("eval_top1")),
                "test_top5": _finite(ev.get("eval_top5")),
            }
        )
    return rows


def _rows_from_per_epoch_eval(per_epoch_eval: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Normalise caller-given evaluations (keys epoch, top1/test_top1/eval_top1, top5..., loss...)."""
    out: dict[int, dict[str, Any]] = {}
    for i, item in enumerate(per_epoch_eval, start=1):
        ep = int(item.get("epoch", i))

        def pick(*names: str, _item: Mapping[str, Any] = item) -> float | None:
            for name in names:
                if name in _item:
                    return _finite(_item[name])
            return None

        out[ep] = {
            "test_top1": pick("test_top1", "eval_top1", "top1"),
            "test_top5": pick("test_top5", "eval_top5", "top5"),
            "test_loss": pick("test_loss", "eval_loss", "loss"),
            "test_task_loss": pick("test_task_loss", "eval_task_loss", "task_loss"),
            "test_sigreg_loss": pick("test_sigreg_loss", "eval_sigreg_loss", "sigreg_loss"),
        }
    return out


def write_log_history_csv(log_history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write every log entry as one CSV row (columns: ``step``, ``epoch``, then the other keys sorted)."""
    path = Path(path)
    keys: set[str] = set()
    for entry in log_history:
        keys.update(entry)
    first = [k for k in ("step", "epoch") if k in keys]
    columns = first + sorted(keys - set(first))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for entry in log_history:
            writer.writerow({k: entry.get(k, "") for k in columns})
    return path


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def MaxNLocator(**kwargs: Any) -> Any:  # noqa: N802 - matplotlib's name; imported lazily like the rest
    from matplotlib.ticker import MaxNLocator as _MaxNLocator

    return _MaxNLocator(**kwargs)


def _figure(ncols: int, width: float = 6.0, height: float = 4.2) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if value is not None:
            xs.append(int(row["epoch"]))
            ys.append(float(value))
    return xs, ys


def plot_loss_curves(
    rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "", note: str | None = None
) -> Path:
    """Two panels: (left) total and task cross-entropy, train and test; (right) the SIGReg statistic.

    The SIGReg panel shows the unweighted mean over tapped layers (what the regulariser measures), on a
    log scale; for a run without SIGReg it says so instead. ``note`` is printed under that panel.
    """
    fig = _figure(2)
    ax_loss, ax_reg = fig.subplots(1, 2)
    styles = (
        ("train_loss", "train total loss", "#1f77b4", "-"),
        ("train_task_loss", "train task loss (CE)", "#1f77b4", ":"),
        ("test_loss", "test total loss", "#d62728", "-"),
        ("test_task_loss", "test task loss (CE)", "#d62728", ":"),
    )
    has_reg = any(row.get("train_sigreg_loss") is not None or row.get("test_sigreg_loss") is not None
                  for row in rows)  # fmt: skip
    for key, label, color, ls in styles:
        if not has_reg and key.endswith("task_loss"):
            continue  # identical to the total loss without a regulariser
        xs, ys = _series(rows, key)
        if xs:
            ax_loss.plot(xs, ys, ls, color=color, label=label, marker="o" if len(xs) < 30 else None, ms=3)
    ax_loss.set_xlabel("epoch")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Loss (total = (1-a)*task + a*SIGReg)" if has_reg else "Loss (cross-entropy)")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend()
    ax_reg.set_xlabel("epoch")
    ax_reg.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_reg.set_ylabel("SIGReg statistic (mean over tapped layers)")
    ax_reg.set_title("SIGReg part")
    ax_reg.grid(alpha=0.3)
    if has_reg:
        for key, label, color in (("train_sigreg_loss", "train", "#1f77b4"), ("test_sigreg_loss", "test", "#d62728")):
            xs, ys = _series(rows, key)
            if xs:
                ax_reg.plot(xs, ys, "-", color=color, label=label, marker="o" if len(xs) < 30 else None, ms=3)
        if all(v > 0 for line in ax_reg.lines for v in line.get_ydata()):
            ax_reg.set_yscale("log")
        ax_reg.legend()
        if note:
            ax_reg.text(0.02, 0.02, note, transform=ax_reg.transAxes, fontsize=8, color="#555555", va="bottom",
                        wrap=True)  # fmt: skip
    else:
        ax_reg.text(0.5, 0.5, "no SIGReg term in this run\n(baseline)", ha="center", va="center",
                    transform=ax_reg.transAxes, fontsize=12, color="#666666")  # fmt: skip
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_accuracy_curves(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "",
    published_top1: float | None = None,
) -> Path:
    """Test top-1 and top-5 accuracy (percent) per epoch (and train top-1 when logged); best top-1 marked."""
    fig = _figure(1, width=7.0)
    ax = fig.subplots()
    curves = (("test_top1", "test top-1", "#1f77b4"), ("test_top5", "test top-5", "#2ca02c"),
              ("train_top1", "train top-1 (augmented batches)", "#9467bd"))
    for key, label, color in curves:
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, "-", color=color, label=label, marker="o" if len(xs) < 30 else None, ms=3)
    xs, ys = _series(rows, "test_top1")
    if ys:
        best = max(range(len(ys)), key=lambda i: (ys[i], -xs[i]))
        ax.scatter([xs[best]], [ys[best]], s=80, facecolors="none", edgecolors="black", zorder=5,
                   label=f"best top-1 {ys[best]:.2f}% (epoch {xs[best]})")  # fmt: skip
    if published_top1 is not None:
        ax.axhline(published_top1, color="#ff7f0e", ls="--", label=f"seed's published top-1 {published_top1:.2f}%")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Test accuracy per epoch")
    ax.grid(alpha=0.3)
    if ax.lines or ax.collections:
        ax.legend(loc="best")
    fig.savefig(path, dpi=110)
    return Path(path)


def setting_key(run: Mapping[str, Any], index: int = 0) -> tuple[str, str, float | None, str]:
    """What a run's setting is, seed aside: recipe (else run name), mode, alpha and sketch type."""
    name = str(run.get("recipe") or run.get("run_name") or f"run {index}")
    mode = sigreg_mode_of(run)
    alpha = run.get("sigreg_alpha") if mode != "none" else None
    sketch = (run.get("sigreg_sketch_type") or "gaussian") if mode != "none" else ""
    return name, mode, (float(alpha) if alpha is not None else None), sketch


def group_runs_by_setting(runs: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Runs that differ only in their seed, grouped (first-seen order): same recipe (else run name), mode,
    alpha and sketch type."""
    groups: dict[tuple[str, str, float | None, str], list[Mapping[str, Any]]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(setting_key(run, i), []).append(run)
    return list(groups.values())


def _mean_series(series: Sequence[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """Epoch-wise mean over several (epochs, values) series, on the epochs they all have."""
    common = set(series[0][0]).intersection(*(set(xs) for xs, _ in series[1:]))
    xs = sorted(common)
    by_epoch = [dict(zip(sx, sy, strict=True)) for sx, sy in series]
    return xs, [sum(values[x] for values in by_epoch) / len(by_epoch) for x in xs]


def plot_overlay(runs: Sequence[Mapping[str, Any]], output_dir: str | Path, *, prefix: str = "overlay") -> list[Path]:
    """Overlay plots of several runs (e.g. baseline / weak / strong): test top-1 and train/test task loss.

    ``runs`` are results dicts (from :func:`load_results`); each needs its ``per_epoch`` rows. The accuracy
    figure has the per-epoch test top-1 and its best-so-far (what the seed's tables report). Runs of one
    setting with several seeds (:func:`group_runs_by_setting`) share a colour: each seed is a thin line and
    their epoch-wise mean a thick one. Returns the written paths ``<prefix>_accuracy.png`` and
    ``<prefix>_loss.png``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    palette = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    groups = group_runs_by_setting(runs)
    styles: list[tuple[str, str]] = []
    used: set[str] = set()
    for i, group in enumerate(groups):
        mode = sigreg_mode_of(group[0])
        color, mode_label = _MODE_STYLE[mode]
        if mode in used:  # a second setting of the same mode: another colour
            color = palette[i % len(palette)]
        used.add(mode)
        name = str(group[0].get("run_name") or group[0].get("recipe") or f"run {i}")
        label = mode_label if name == mode else f"{name}: {mode_label}"
        if len(group) > 1:
            label += f", mean of {len(group)} seeds (thin: each seed)"
        styles.append((color, label))

    def draw(ax: Any, key: str, best_so_far: bool = False) -> None:
        for group, (color, label) in zip(groups, styles, strict=True):
            series = [s for s in (_series(run.get("per_epoch", []), key) for run in group) if s[0]]
            if best_so_far:
                series = [(xs, list(itertools.accumulate(ys, max))) for xs, ys in series]
            if not series:
                continue
            marker = "o" if max(len(xs) for xs, _ in series) < 30 else None
            if len(series) == 1:
                ax.plot(*series[0], "-", color=color, label=label, marker=marker, ms=3)
                continue
            for xs, ys in series:
                ax.plot(xs, ys, "-", color=color, lw=0.8, alpha=0.35)
            ax.plot(*_mean_series(series), "-", color=color, lw=2.0, label=label, marker=marker, ms=3)

    fig = _figure(2)
    for ax, best_so_far in zip(fig.subplots(1, 2), (False, True), strict=True):
        draw(ax, "test_top1", best_so_far)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("best-so-far test top-1 (%)" if best_so_far else "test top-1 accuracy (%)")
        ax.set_title("Best test top-1 up to each epoch" if best_so_far else "Test top-1 per epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    acc_path = output_dir / f"{prefix}_accuracy.png"
    fig.savefig(acc_path, dpi=110)

    fig = _figure(2)
    ax_train, ax_test = fig.subplots(1, 2)
    for ax, split in ((ax_train, "train"), (ax_test, "test")):
        draw(ax, f"{split}_task_loss")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{split} task loss (cross-entropy)")
        ax.set_title(f"{split.capitalize()} task loss")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="upper right", fontsize="small")  # losses fall from the upper left
    loss_path = output_dir / f"{prefix}_loss.png"
    fig.savefig(loss_path, dpi=110)
    return [acc_path, loss_path]


# --------------------------------------------------------------------------------------------------
# results.json
# --------------------------------------------------------------------------------------------------
def _last_value(log_history: Sequence[Mapping[str, Any]], key: str) -> float | None:
    for entry in reversed(log_history):
        if key in entry:
            return _finite(entry[key])
    return None


def write_run_outputs(
    output_dir: str | Path,
    *,
    log_history: Sequence[Mapping[str, Any]],
    recipe: str | None,
    seed: int,
    epochs: float | None,
    wall_seconds: float | None = None,
    images_per_second: float | None = None,
    per_epoch_eval: Sequence[Mapping[str, Any]] | None = None,
    published_top1: float | None = None,
    recipe_config: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    sigreg_mode: str | None = None,
    sigreg_alpha: float | None = None,
    train_images: int | None = None,
    eval_images: int | None = None,
    command: str | None = None,
    run_name: str | None = None,
    extra: Mapping[str, Any] | None = None,
    record: Mapping[str, Any] | None = None,
    plots: bool = True,
    results_file: str = RESULTS_FILE,
    compare_published: bool = True,
) -> dict[str, Any]:
    """Write ``results.json``, ``log_history.csv``, the plots (and ``recipe.yaml``) into ``output_dir``.

    Args:
        output_dir: the run directory (created if needed).
        log_history: ``trainer.state.log_history`` (train logs with ``loss`` / ``task_loss`` /
            ``sigreg_loss``; evaluation logs with ``eval_loss`` / ``eval_top1`` / ``eval_top5`` in percent,
            as :func:`sigreg_hf.experiments.metrics.build_compute_metrics` produces).
        recipe: recipe name (e.g. ``"mlp_sgd_weak"``), or ``None`` for an ad-hoc run.
        seed: the run's seed.
        epochs: epochs trained (``trainer.state.epoch``, may be fractional) or planned.
        wall_seconds: training wall time; default ``train_runtime`` from the log history.
        images_per_second: training throughput; default ``train_samples_per_second`` from the log history.
        per_epoch_eval: optional evaluations per epoch (dicts with ``epoch`` and ``top1``/``top5``/``loss``
            or their ``eval_``/``test_`` forms); they override what the log history says for those epochs.
        published_top1: the seed's published top-1 (percent) for this recipe; default
            ``recipe_config["published_top1"]`` when given.
        recipe_config: the recipe's settings (written to ``recipe.yaml`` and recorded).
        model_name, dataset_name, sigreg_mode, sigreg_alpha, train_images, eval_images, command, run_name:
            recorded as given (``sigreg_mode`` / ``sigreg_alpha`` / ``model_name`` default to the recipe's).
        extra: more JSON-serialisable fields to record under ``"extra"``.
        record: a results record from the training CLI (e.g. ``sigreg_hf.experiments.cli_train.collect_results``): its
            fields are kept at the top level (optimizer, learning rate, evaluations, ...), except those this
            function computes, which win (accuracies, losses, per-epoch table, versions).
        plots: write the PNG plots (default True).
        results_file: file name of the results JSON inside ``output_dir``.
        compare_published: False when the run's data is not the data the published number was measured
            on (e.g. a CIFAR-100 recipe trained on CIFAR-10): no published number, no difference.

    Returns:
        The results dict that was written. Accuracies are percentages. ``final_epoch`` is the last evaluated
        epoch; ``best_epoch`` the epoch with the highest test top-1 (model selection on the test set, which
        is what the seed's tables report as "Top-1 Acc").
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_history = [dict(entry) for entry in log_history]
    recipe_config = dict(recipe_config) if recipe_config is not None else None
    if record is not None:
        model_name = model_name or record.get("model_name")
        dataset_name = dataset_name or record.get("dataset")
        sigreg_mode = sigreg_mode or record.get("sigreg_mode")
        sigreg_alpha = sigreg_alpha if sigreg_alpha is not None else record.get("sigreg_alpha")
        train_images = train_images if train_images is not None else record.get("train_images")
        eval_images = eval_images if eval_images is not None else record.get("eval_images")
        published_top1 = published_top1 if published_top1 is not None else record.get("published_top1")
    if recipe_config is not None:
        published_top1 = published_top1 if published_top1 is not None else recipe_config.get("published_top1")
        sigreg_mode = sigreg_mode or recipe_config.get("sigreg_mode")
        if sigreg_alpha is None and recipe_config.get("sigreg_mode", "none") != "none":
            sigreg_alpha = recipe_config.get("sigreg_alpha")
        model_name = model_name or recipe_config.get("model_name")
        dataset_name = dataset_name or recipe_config.get("dataset_name")
    if not compare_published:
        published_top1 = None

    rows = epoch_table(log_history)
    if per_epoch_eval:
        given = _rows_from_per_epoch_eval(per_epoch_eval)
        by_epoch = {row["epoch"]: row for row in rows}
        for ep, values in given.items():
            row = by_epoch.setdefault(ep, {"epoch": ep, "train_loss": None, "train_task_loss": None,
                                           "train_sigreg_loss": None, "train_top1": None, "test_loss": None,
                                           "test_task_loss": None, "test_sigreg_loss": None,
                                           "test_top1": None, "test_top5": None})  # fmt: skip
            row.update({k: v for k, v in values.items() if v is not None})
        rows = [by_epoch[ep] for ep in sorted(by_epoch)]

    evaluated = [row for row in rows if row.get("test_top1") is not None]
    final = evaluated[-1] if evaluated else None
    best = max(evaluated, key=lambda r: (r["test_top1"], -r["epoch"])) if evaluated else None

    def accuracy_block(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return {"epoch": row["epoch"], "top1": row["test_top1"], "top5": row.get("test_top5"),
                "loss": row.get("test_loss")}  # fmt: skip

    last = rows[-1] if rows else {}
    wall = _finite(wall_seconds) if wall_seconds is not None else _last_value(log_history, "train_runtime")
    ips = (
        _finite(images_per_second)
        if images_per_second is not None
        else _last_value(log_history, "train_samples_per_second")
    )
    best_top1 = best["test_top1"] if best else None
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_name": run_name or output_dir.name,
        "recipe": recipe,
        "model_name": model_name,
        "dataset": dataset_name,
        "sigreg_mode": sigreg_mode or "none",
        "sigreg_alpha": sigreg_alpha if (sigreg_mode or "none") != "none" else 0.0,
        "seed": seed,
        "epochs": epochs,
        "train_images": train_images,
        "eval_images": eval_images,
        "accuracy_unit": "percent",
        "evaluation_split": "test",
        "test_accuracy_final_epoch": accuracy_block(final),
        "test_accuracy_best_epoch": accuracy_block(best),
        "accuracy_note": "test_accuracy_best_epoch / best_top1: the best test top-1 over all evaluated epochs "
        "(model selection on the test set, which is what the seed's tables report as 'Top-1 Acc'); "
        "test_accuracy_final_epoch / final_top1: the last evaluated epoch (the saved weights)",
        "final_top1": final["test_top1"] if final else None,
        "final_top5": final.get("test_top5") if final else None,
        "best_top1": best_top1,
        "best_top5": best.get("test_top5") if best else None,
        "best_epoch": best["epoch"] if best else None,
        "test_top1_by_epoch": [row["test_top1"] for row in evaluated],
        "test_top5_by_epoch": [row.get("test_top5") for row in evaluated],
        "evaluated_epochs": [row["epoch"] for row in evaluated],
        "published_top1": published_top1,
        "best_minus_published_top1": (
            round(best_top1 - published_top1, 4) if best_top1 is not None and published_top1 is not None else None
        ),
        "losses": {
            "epoch": last.get("epoch"),
            "train_loss": last.get("train_loss"),
            "train_task_loss": last.get("train_task_loss"),
            "train_sigreg_loss": last.get("train_sigreg_loss"),
            "test_loss": last.get("test_loss"),
            "test_task_loss": last.get("test_task_loss"),
            "test_sigreg_loss": last.get("test_sigreg_loss"),
            "train_loss_mean_over_run": _last_value(log_history, "train_loss"),
            "note": "means over the last epoch's training logs and its test evaluation; sigreg losses are the "
            "unweighted statistic (mean over tapped layers), task losses the cross-entropy",
        },
        "wall_seconds": wall,
        "images_per_second": ips,
        "per_epoch": rows,
        "command": command,
        "library_versions": library_versions(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {"log_history": LOG_CSV_FILE},
    }
    if recipe_config is not None:
        import yaml

        results["recipe_config"] = recipe_config
        with open(output_dir / RECIPE_FILE, "w", encoding="utf-8") as fh:
            yaml.safe_dump(recipe_config, fh, sort_keys=True)
        results["files"]["recipe"] = RECIPE_FILE
    if extra:
        results["extra"] = dict(extra)
    if record:
        withheld = () if compare_published else ("published_top1", "best_minus_published_top1")
        for key, value in record.items():
            if (key not in results or results[key] is None) and key not in withheld:
                results[key] = value

    write_log_history_csv(log_history, output_dir / LOG_CSV_FILE)
    if plots:
        label = " / ".join(str(x) for x in (recipe or run_name or output_dir.name, f"seed {seed}") if x)
        note = (
            "the strong statistic is multiplied by the batch size N,\n"
            "so train and test values differ with their batch sizes"
            if (sigreg_mode or "none") == "strong"
            else None
        )
        plot_loss_curves(rows, output_dir / LOSS_PLOT_FILE, title=label, note=note)
        plot_accuracy_curves(rows, output_dir / ACCURACY_PLOT_FILE, title=f"Test accuracy: {label}",
                             published_top1=published_top1)  # fmt: skip
        results["files"]["loss_plot"] = LOSS_PLOT_FILE
        results["files"]["accuracy_plot"] = ACCURACY_PLOT_FILE
    with open(output_dir / results_file, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2, allow_nan=False)
        fh.write("\n")
    return results


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Read ``RUN_DIR/results.json`` (or a results JSON path) and add ``run_dir`` to it."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No {RESULTS_FILE} at {path}: pass run directories written by scripts/train.py or the quickstart."
        )
    with open(path, encoding="utf-8") as fh:
        results = json.load(fh)
    results["run_dir"] = str(path.parent)
    return results


# --------------------------------------------------------------------------------------------------
# several runs side by side
# --------------------------------------------------------------------------------------------------
_TABLE_COLUMNS = (
    ("run", "Run"),
    ("recipe", "Recipe"),
    ("sigreg", "SIGReg"),
    ("seed", "Seed"),
    ("epochs", "Epochs"),
    ("final_top1", "Final top-1 (%)"),
    ("best_top1", "Best top-1 (%)"),
    ("best_epoch", "Best epoch"),
    ("best_top5", "Best top-5 (%)"),
    ("published_top1", "Seed's published top-1 (%)"),
    ("difference", "Best - published (pts)"),
    ("wall_seconds", "Wall time (s)"),
    ("images_per_second", "Images/s"),
)


def _table_row(results: Mapping[str, Any]) -> dict[str, Any]:
    mode = sigreg_mode_of(results)
    alpha = results.get("sigreg_alpha")
    best = results.get("test_accuracy_best_epoch") or {}
    return {
        "run": results.get("run_name") or Path(str(results.get("run_dir", "?"))).name,
        "recipe": results.get("recipe"),
        "sigreg": mode if mode == "none" or alpha in (None, 0) else f"{mode} (a={alpha:g})",
        "seed": results.get("seed"),
        "epochs": results.get("epochs"),
        "final_top1": results.get("final_top1"),
        "best_top1": results.get("best_top1"),
        "best_epoch": best.get("epoch", results.get("best_epoch")),
        "best_top5": results.get("best_top5"),
        "published_top1": results.get("published_top1"),
        "difference": results.get("best_minus_published_top1"),
        "wall_seconds": results.get("wall_seconds"),
        "images_per_second": results.get("images_per_second"),
    }


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if key == "difference":
            return f"{value:+.2f}"
        if key in ("wall_seconds", "images_per_second"):
            return f"{value:,.0f}"
        if key == "epochs":
            return f"{value:g}"
        return f"{value:.2f}"
    return str(value)


def results_table_markdown(runs: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of runs (results dicts), with the seed's published top-1 and the difference."""
    header = "| " + " | ".join(title for _, title in _TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" if key in ("run", "recipe", "sigreg") else "---:" for key, _ in _TABLE_COLUMNS) + "|"
    lines = [header, rule]
    for run in runs:
        row = _table_row(run)
        lines.append("| " + " | ".join(_fmt(row[key], key) for key, _ in _TABLE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values)}


def experiment_summary(
    runs: Sequence[Mapping[str, Any]], *, experiment: str, dataset: str | None = None
) -> dict[str, Any]:
    """The compact record of an experiment's runs (``summary.json``): per run, the test top-1 of every epoch
    (percent), final and best top-1, and wall time; per setting with several seeds, their mean/min/max."""
    summary_runs = []
    for run in runs:
        curve = [float(v) for v in run.get("test_top1_by_epoch") or []]
        summary_runs.append(
            {
                "recipe": run.get("recipe"),
                "sigreg_mode": run.get("sigreg_mode"),
                "sigreg_alpha": run.get("sigreg_alpha"),
                "sigreg_sketch_type": run.get("sigreg_sketch_type"),
                "seed": run.get("seed"),
                "train_images": run.get("train_images"),
                "epochs": run.get("epochs"),
                "test_top1_by_epoch": curve,
                "final_top1": run.get("final_top1"),
                "best_top1": run.get("best_top1"),
                "wall_seconds": run.get("wall_seconds"),
            }
        )
    dataset = dataset or (runs[0].get("dataset") if runs else None)
    summary: dict[str, Any] = {"experiment": experiment, "dataset": dataset, "runs": summary_runs}
    seed_groups = []
    for group in group_runs_by_setting(runs):
        finals = [v for v in (_finite(r.get("final_top1")) for r in group) if v is not None]
        bests = [v for v in (_finite(r.get("best_top1")) for r in group) if v is not None]
        if len(group) < 2 or len(finals) < 2 or len(bests) < 2:
            continue
        curves = [[float(v) for v in r.get("test_top1_by_epoch") or []] for r in group]
        length = min(len(c) for c in curves)
        seed_groups.append(
            {
                "recipe": group[0].get("recipe"),
                "sigreg_mode": sigreg_mode_of(group[0]),
                "sigreg_alpha": group[0].get("sigreg_alpha"),
                "sigreg_sketch_type": group[0].get("sigreg_sketch_type"),
                "seeds": [r.get("seed") for r in group],
                "final_top1": _spread(finals),
                "best_top1": _spread(bests),
                "test_top1_by_epoch_mean": [round(sum(c[e] for c in curves) / len(curves), 4) for e in range(length)],
            }
        )
    if seed_groups:
        summary["across_seeds"] = seed_groups
    return summary


def collect_results(
    run_dirs: Sequence[str | Path], output_dir: str | Path | None = None, *, plots: bool = True
) -> tuple[list[dict[str, Any]], str]:
    """Load runs and build the side-by-side table; with ``output_dir``, write it and the overlay plots.

    Writes ``results_table.md``, ``results_table.csv`` and ``overlay_accuracy.png`` / ``overlay_loss.png``
    into ``output_dir``. Returns ``(results dicts, markdown table)``.
    """
    if not run_dirs:
        raise ValueError("collect_results needs at least one run directory.")
    runs = [load_results(d) for d in run_dirs]
    markdown = results_table_markdown(runs)
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "results_table.md").write_text(markdown, encoding="utf-8")
        with open(output_dir / "results_table.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=[key for key, _ in _TABLE_COLUMNS] + ["run_dir"])
            writer.writeheader()
            for run in runs:
                writer.writerow({**_table_row(run), "run_dir": run.get("run_dir")})
        if plots:
            plot_overlay(runs, output_dir)
    return runs, markdown
