"""Plots of runs: a run's loss and accuracy curves, and overlays of several runs (seeds grouped).

Each plot is a function of per-epoch rows or of :class:`~sigreg_hf.experiments.record.RunRecord` s. Plots use
matplotlib's object-oriented API with the Agg canvas, so no display is needed and the caller's pyplot backend
is never changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sigreg_hf.experiments.record import (
    ACCURACY_PLOT_FILE,
    LOSS_PLOT_FILE,
    RunRecord,
    as_results,
    group_runs_by_setting,
    sigreg_mode_of,
)

__all__ = ["plot_accuracy_curves", "plot_loss_curves", "plot_overlay", "plot_run"]

_MODE_STYLE = {"none": ("#444444", "baseline, no SIGReg"), "weak": ("#1f77b4", "weak SIGReg"),
               "strong": ("#d62728", "strong SIGReg")}  # fmt: skip


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


def _mean_series(series: Sequence[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """Epoch-wise mean over several (epochs, values) series, on the epochs they all have."""
    common = set(series[0][0]).intersection(*(set(xs) for xs, _ in series[1:]))
    xs = sorted(common)
    by_epoch = [dict(zip(sx, sy, strict=True)) for sx, sy in series]
    return xs, [sum(values[x] for values in by_epoch) / len(by_epoch) for x in xs]


def plot_overlay(
    runs: Sequence[RunRecord | Mapping[str, Any]], output_dir: str | Path, *, prefix: str = "overlay"
) -> list[Path]:
    """Overlay plots of several runs (e.g. baseline / weak / strong): test top-1 and train/test task loss.

    ``runs`` are records (or their ``results.json`` views); each needs its ``per_epoch`` rows. The accuracy
    figure has the per-epoch test top-1 and its best-so-far (what the seed's tables report). Runs of one
    setting with several seeds (:func:`group_runs_by_setting`) share a colour: each seed is a thin line and
    their epoch-wise mean a thick one. Returns the written paths ``<prefix>_accuracy.png`` and
    ``<prefix>_loss.png``.
    """
    runs = [as_results(run) for run in runs]
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



def plot_run(record: RunRecord, output_dir: str | Path) -> dict[str, str]:
    """The run's loss and accuracy curves in ``output_dir``; returns ``{"loss_plot": ..., "accuracy_plot": ...}``."""
    output_dir = Path(output_dir)
    label = " / ".join(str(x) for x in (record.recipe or record.run_name, f"seed {record.seed}") if x)
    note = (
        "the strong statistic is multiplied by the batch size N,\n"
        "so train and test values differ with their batch sizes"
        if record.sigreg_mode == "strong"
        else None
    )
    plot_loss_curves(record.per_epoch, output_dir / LOSS_PLOT_FILE, title=label, note=note)
    plot_accuracy_curves(record.per_epoch, output_dir / ACCURACY_PLOT_FILE, title=f"Test accuracy: {label}",
                         published_top1=record.published_top1)  # fmt: skip
    return {"loss_plot": LOSS_PLOT_FILE, "accuracy_plot": ACCURACY_PLOT_FILE}
