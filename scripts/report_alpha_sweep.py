"""The alpha / sketch sweep on the overfitting MLP (issue 14, part 1): summary.json, table and figures.

Reads the sweep's run folders (``results.json`` written by ``scripts/train.py``) and, for the settings run
before (none, weak alpha 0.1, strong alpha 0.01), an earlier experiment's ``summary.json``::

    python scripts/report_alpha_sweep.py runs/cifar10/mlp-subset-sweep/* \\
        --previous docs/results/cifar10/mlp-subset/summary.json \\
        --output_dir docs/results/cifar10/mlp-subset-sweep

Writes ``summary.json`` (the experiments' schema, every run with ``sigreg_alpha`` and ``sigreg_sketch_type``,
previous runs marked with their source), ``sweep_table.md`` and ``alpha_sweep.png``: final and best top-1
against alpha per mode, a point per seed, the baseline's seed range as a band.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sigreg_hf.experiments.collect import experiment_summary  # noqa: E402
from sigreg_hf.experiments.record import load_results  # noqa: E402

_STYLE = {
    ("weak", "gaussian"): ("#2ca02c", "o", "weak"),
    ("weak", "orthonormal"): ("#9467bd", "s", "weak, orthonormal sketch"),
    ("strong", "gaussian"): ("#d62728", "^", "strong"),
}


def _point_key(run: Mapping[str, Any]) -> tuple[str, str]:
    return str(run["sigreg_mode"]), str(run.get("sigreg_sketch_type") or "gaussian")


def previous_runs(summary_path: str | Path) -> list[dict[str, Any]]:
    """The runs of an earlier experiment's summary.json, with the alpha of their recipe where not recorded."""
    default_alpha = {"none": 0.0, "weak": 0.1, "strong": 0.01}
    summary = json.loads(Path(summary_path).read_text())
    runs = []
    for run in summary["runs"]:
        run = dict(run)
        run.setdefault("sigreg_alpha", default_alpha[run["sigreg_mode"]])
        if run.get("sigreg_alpha") is None:
            run["sigreg_alpha"] = default_alpha[run["sigreg_mode"]]
        if run["sigreg_mode"] != "none" and not run.get("sigreg_sketch_type"):
            run["sigreg_sketch_type"] = "gaussian"
        run["source"] = f"{summary['experiment']} ({Path(summary_path).as_posix()})"
        runs.append(run)
    return runs


def plot_alpha_sweep(runs: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Final and best top-1 against alpha (log axis) per mode, a point per seed, the baseline's seed range a band."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
    baseline = [r for r in runs if r["sigreg_mode"] == "none"]
    for ax, key, title in ((axes[0], "final_top1", "final top-1 (last epoch)"),
                           (axes[1], "best_top1", "best top-1 over epochs")):  # fmt: skip
        if baseline:
            values = [float(r[key]) for r in baseline]
            ax.axhspan(min(values), max(values), color="#1f77b4", alpha=0.15,
                       label=f"no SIGReg: seeds {sorted(r['seed'] for r in baseline)} range")  # fmt: skip
            ax.axhline(sum(values) / len(values), color="#1f77b4", lw=1)
        for (mode, sketch), (colour, marker, label) in _STYLE.items():
            group = [r for r in runs if _point_key(r) == (mode, sketch) and r["sigreg_mode"] != "none"]
            if not group:
                continue
            alphas = sorted({float(r["sigreg_alpha"]) for r in group})
            means = [sum(float(r[key]) for r in group if float(r["sigreg_alpha"]) == a)
                     / sum(1 for r in group if float(r["sigreg_alpha"]) == a) for a in alphas]  # fmt: skip
            offset = 1.06 if sketch == "orthonormal" else 1.0  # keep overlapping alphas apart
            ax.scatter([float(r["sigreg_alpha"]) * offset for r in group], [float(r[key]) for r in group],
                       color=colour, marker=marker, s=30, alpha=0.7, label=f"{label} (a point per seed)")  # fmt: skip
            if len(alphas) > 1:
                ax.plot(alphas, means, "-", color=colour, lw=1.5, label=f"{label}: mean over seeds")
            else:
                ax.plot([a * offset for a in alphas], means, "_", color=colour, ms=18, mew=2)
        ax.set_xscale("log")
        ax.set_xlabel("sigreg_alpha (convex weighting)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _per_epoch_facts(run: Mapping[str, Any]) -> dict[str, Any]:
    rows = run.get("per_epoch") or []
    tests = [(r["epoch"], r["test_task_loss"]) for r in rows if r.get("test_task_loss") is not None]
    last = rows[-1] if rows else {}
    facts: dict[str, Any] = {}
    if tests:
        epoch, value = min(tests, key=lambda t: t[1])
        facts.update(min_test_ce=round(value, 4), min_test_ce_epoch=epoch, final_test_ce=round(tests[-1][1], 4))
    if last.get("train_task_loss") is not None and last.get("test_task_loss") is not None:
        facts["final_train_task_loss"] = round(last["train_task_loss"], 4)
        facts["final_gap"] = round(last["test_task_loss"] - last["train_task_loss"], 4)
    facts["test_ce_by_epoch"] = [round(r["test_task_loss"], 5) for r in rows if r.get("test_task_loss") is not None]
    return facts


def across_settings(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean/min/max of final and best top-1 per (mode, sketch, alpha) over its seeds, previous runs included."""
    groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        key = (run["sigreg_mode"], run.get("sigreg_sketch_type") or "", float(run["sigreg_alpha"]))
        groups.setdefault(key, []).append(run)

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values)}

    return [
        {"sigreg_mode": mode, "sigreg_sketch_type": sketch or None, "sigreg_alpha": alpha,
         "seeds": [r["seed"] for r in group], "final_top1": spread([float(r["final_top1"]) for r in group]),
         "best_top1": spread([float(r["best_top1"]) for r in group])}  # fmt: skip
        for (mode, sketch, alpha), group in sorted(groups.items())
    ]


def build_report(run_dirs: Sequence[str], previous: str | None, output_dir: str | Path) -> dict[str, Any]:
    runs = [load_results(d) for d in run_dirs]
    summary = experiment_summary(runs, experiment="mlp-subset-sweep", dataset=runs[0].get("dataset") if runs else None)
    for entry, run in zip(summary["runs"], runs, strict=True):
        entry.update(_per_epoch_facts(run))
        entry["source"] = "this sweep"
    if previous:
        summary["runs"] = previous_runs(previous) + summary["runs"]
    summary["across_seeds"] = across_settings(summary["runs"])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_alpha_sweep(summary["runs"], out / "alpha_sweep.png")
    lines = ["| mode | sketch | alpha | seed | final top-1 | best top-1 | min test CE (epoch) | test CE at end | "
             "train CE at end | gap | source |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip

    def sort_key(r: Mapping[str, Any]) -> tuple:
        sketch = r.get("sigreg_sketch_type") or ""
        return r["sigreg_mode"] != "none", r["sigreg_mode"], sketch, r["sigreg_alpha"], r["seed"]

    order = sorted(summary["runs"], key=sort_key)
    for r in order:
        ce = f"{r['min_test_ce']:.3f} ({r['min_test_ce_epoch']})" if "min_test_ce" in r else "-"
        lines.append(
            f"| {r['sigreg_mode']} | {r.get('sigreg_sketch_type') or '-'} | {r['sigreg_alpha']:g} | {r['seed']} | "
            f"{r['final_top1']:.2f} | {r['best_top1']:.2f} | {ce} | {r.get('final_test_ce', '-')} | "
            f"{r.get('final_train_task_loss', '-')} | {r.get('final_gap', '-')} | "
            f"{'previous' if r['source'] != 'this sweep' else 'sweep'} |"
        )
    (out / "sweep_table.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--previous", help="an earlier experiment's summary.json with the none/weak/strong runs")
    parser.add_argument("--output_dir", required=True)
    ns = parser.parse_args(argv)
    build_report(ns.run_dirs, ns.previous, ns.output_dir)


if __name__ == "__main__":
    main()
