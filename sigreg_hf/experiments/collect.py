"""Several runs side by side: the Markdown/CSV table against the seed's published numbers, overlay plots, and
an experiment's ``summary.json`` record (seeds of one setting summarised).

``scripts/collect_results.py`` and ``sigreg-hf collect`` are the command lines. Every function takes
:class:`~sigreg_hf.experiments.record.RunRecord` s or their ``results.json`` views.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sigreg_hf.experiments.plots import plot_overlay
from sigreg_hf.experiments.record import (
    RunRecord,
    as_results,
    finite_or_none,
    group_runs_by_setting,
    load_results,
    sigreg_mode_of,
)

__all__ = ["collect_results", "experiment_summary", "results_table_markdown"]

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


def _table_row(results: RunRecord | Mapping[str, Any]) -> dict[str, Any]:
    results = as_results(results)
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


def results_table_markdown(runs: Sequence[RunRecord | Mapping[str, Any]]) -> str:
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
    runs: Sequence[RunRecord | Mapping[str, Any]], *, experiment: str, dataset: str | None = None
) -> dict[str, Any]:
    """The compact record of an experiment's runs (``summary.json``): per run, the test top-1 of every epoch
    (percent), final and best top-1, and wall time; per setting with several seeds, their mean/min/max."""
    runs = [as_results(run) for run in runs]
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
        finals = [v for v in (finite_or_none(r.get("final_top1")) for r in group) if v is not None]
        bests = [v for v in (finite_or_none(r.get("best_top1")) for r in group) if v is not None]
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
    runs = [load_results(d) for d in run_dirs]  # the results.json views, with run_dir
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
