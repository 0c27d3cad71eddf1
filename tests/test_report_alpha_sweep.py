"""scripts/report_alpha_sweep.py: the sweep's summary (previous runs merged, settings grouped), table and figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from sigreg_hf.experiments.record import RunRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("report_alpha_sweep", REPO_ROOT / "scripts" / "report_alpha_sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def _run(root: Path, mode: str, alpha: float, sketch: str, seed: int, top1: list[float]) -> Path:
    history = []
    for epoch, acc in enumerate(top1, start=1):
        history.append({"epoch": float(epoch), "step": epoch, "loss": 2.0 - 0.1 * epoch,
                        "task_loss": 1.9 - 0.1 * epoch})  # fmt: skip
        history.append({"epoch": float(epoch), "step": epoch, "eval_loss": 1.5 + 0.01 * epoch * (epoch - 2),
                        "eval_top1": acc, "eval_top5": 90.0})  # fmt: skip
    record = RunRecord.from_log_history(history, run_name=f"{mode}{alpha}{sketch}{seed}", recipe=f"mlp_sgd_{mode}",
                                        seed=seed, sigreg_mode=mode, sigreg_alpha=alpha,
                                        settings={"sigreg_sketch_type": sketch})  # fmt: skip
    out = root / record.run_name
    record.save(out)
    return out


def test_report_merges_previous_runs_and_groups_settings(tmp_path):
    runs = [_run(tmp_path, "weak", 0.03, "gaussian", s, [40.0 + s, 45.0, 44.0]) for s in (0, 1)]
    runs += [_run(tmp_path, "weak", 0.1, "orthonormal", 0, [41.0, 47.0, 46.5])]
    previous = tmp_path / "previous.json"
    previous.write_text(json.dumps({"experiment": "mlp-subset", "runs": [
        {"sigreg_mode": "none", "seed": s, "final_top1": 44.0 + s, "best_top1": 45.0 + s} for s in (0, 1)
    ] + [{"sigreg_mode": "weak", "seed": 0, "final_top1": 46.0, "best_top1": 47.0}]}))  # fmt: skip
    summary = sweep.build_report([str(r) for r in runs], str(previous), tmp_path / "report")
    assert [r["source"] == "this sweep" for r in summary["runs"]] == [False] * 3 + [True] * 3
    assert summary["runs"][2]["sigreg_alpha"] == 0.1 and summary["runs"][2]["sigreg_sketch_type"] == "gaussian"
    sweep_run = summary["runs"][3]
    assert sweep_run["min_test_ce_epoch"] == 1 and sweep_run["final_gap"] == round(1.53 - 1.6, 4)
    groups = {(g["sigreg_mode"], g["sigreg_sketch_type"], g["sigreg_alpha"]): g for g in summary["across_seeds"]}
    assert groups[("none", None, 0.0)]["best_top1"] == {"mean": 45.5, "min": 45.0, "max": 46.0}
    assert groups[("weak", "gaussian", 0.03)]["seeds"] == [0, 1]
    assert groups[("weak", "orthonormal", 0.1)]["final_top1"]["mean"] == 46.5
    table = (tmp_path / "report" / "sweep_table.md").read_text()
    assert table.count("\n") == 2 + 6 and "| weak | orthonormal | 0.1 | 0 | 46.50 | 47.00 |" in table
    assert (tmp_path / "report" / "alpha_sweep.png").stat().st_size > 10_000
