"""Run outputs: the RunRecord (results.json fields), the log-history CSV, labelled plots, and the side-by-side
collection."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import pytest
import yaml

import sigreg_hf.experiments.plots as plots_module
from sigreg_hf.experiments.collect import collect_results, experiment_summary, results_table_markdown
from sigreg_hf.experiments.record import (
    DERIVED_KEYS,
    RunRecord,
    epoch_table,
    group_runs_by_setting,
    library_versions,
    load_results,
)
from sigreg_hf.experiments.run_outputs import write_run_outputs

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(output_dir: Path, *, plots: bool = True, record: dict | None = None, **kwargs) -> dict:
    """A record from a log history, written as a run folder; returns its results.json view."""
    run = RunRecord.from_log_history(run_name=Path(output_dir).name, settings=record, **kwargs)
    return write_run_outputs(run, output_dir, plots=plots).to_dict()


def fake_log_history(top1: list[float], *, sigreg: bool, steps_per_epoch: int = 4) -> list[dict]:
    """A log history shaped like the Trainer's: fractional-epoch train logs, an eval per epoch, a summary."""
    log: list[dict] = []
    step = 0
    for epoch, acc in enumerate(top1, start=1):
        for s in range(steps_per_epoch):
            step += 1
            entry = {"loss": 2.0 / epoch + 0.01 * s, "grad_norm": 1.0, "learning_rate": 0.1,
                     "epoch": (epoch - 1) + (s + 1) / steps_per_epoch, "step": step, "train_top1": acc + 5}
            if sigreg:
                entry.update({"task_loss": 1.9 / epoch, "sigreg_loss": 8.0 / epoch, "sigreg_alpha": 0.1})
            log.append(entry)
        ev = {"eval_loss": 2.2 / epoch, "eval_top1": acc, "eval_top5": min(100.0, acc + 30), "eval_runtime": 0.1,
              "epoch": float(epoch), "step": step}
        if sigreg:
            ev.update({"eval_task_loss": 2.1 / epoch, "eval_sigreg_loss": 9.0 / epoch, "eval_sigreg_alpha": 0.1})
        log.append(ev)
    log.append({"train_runtime": 12.5, "train_samples_per_second": 321.0, "train_loss": 1.0,
                "epoch": float(len(top1)), "step": step})
    return log  # fmt: skip


def test_epoch_table_groups_fractional_epochs_and_reads_sigreg_parts():
    rows = epoch_table(fake_log_history([10.0, 20.0, 15.0], sigreg=True))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["train_loss"] == pytest.approx(2.0 + 0.015)  # mean of the 4 logs of epoch 1
    assert rows[1]["train_task_loss"] == pytest.approx(0.95)
    assert rows[1]["train_sigreg_loss"] == pytest.approx(4.0)
    assert rows[2]["test_sigreg_loss"] == pytest.approx(3.0)
    assert [r["test_top1"] for r in rows] == [10.0, 20.0, 15.0]
    assert rows[0]["train_top1"] == pytest.approx(15.0)
    baseline = epoch_table(fake_log_history([10.0], sigreg=False))
    assert baseline[0]["train_task_loss"] == baseline[0]["train_loss"]  # no regulariser: task = total
    assert baseline[0]["train_sigreg_loss"] is None


def test_write_run_outputs_final_and_best_are_labelled_and_files_exist(tmp_path, monkeypatch):
    figures: list[matplotlib.figure.Figure] = []
    original = matplotlib.figure.Figure.savefig

    def capture(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    recipe = {"model_name": "mlp", "sigreg_mode": "weak", "sigreg_alpha": 0.1, "published_top1": 42.17}
    results = write_run(
        tmp_path / "run", log_history=fake_log_history([10.0, 30.0, 25.0], sigreg=True), recipe="mlp_sgd_weak",
        seed=3, epochs=3, recipe_config=recipe, dataset_name="uoft-cs/cifar100", train_images=50000,
        command="python scripts/train.py --recipe mlp_sgd_weak",
    )  # fmt: skip
    run = tmp_path / "run"
    on_disk = json.loads((run / "results.json").read_text())
    final = on_disk["test_accuracy_final_epoch"]
    assert final == {"epoch": 3, "top1": 25.0, "top5": 55.0, "loss": pytest.approx(2.2 / 3)}
    assert on_disk["test_accuracy_best_epoch"]["epoch"] == 2 and on_disk["best_top1"] == 30.0
    assert on_disk["final_top1"] == 25.0 and on_disk["final_top5"] == 55.0 and on_disk["best_top5"] == 60.0
    assert on_disk["test_top1_by_epoch"] == [10.0, 30.0, 25.0]
    assert on_disk["best_minus_published_top1"] == pytest.approx(30.0 - 42.17)
    assert on_disk["accuracy_unit"] == "percent" and "best" in on_disk["accuracy_note"]
    assert on_disk["losses"]["train_sigreg_loss"] == pytest.approx(8.0 / 3)
    assert on_disk["losses"]["test_task_loss"] == pytest.approx(2.1 / 3)
    assert on_disk["wall_seconds"] == 12.5 and on_disk["images_per_second"] == 321.0  # from train_runtime etc.
    assert on_disk["seed"] == 3 and on_disk["recipe"] == "mlp_sgd_weak" and on_disk["sigreg_mode"] == "weak"
    assert on_disk["library_versions"]["torch"] != "not installed" and "python" in on_disk["library_versions"]
    assert {"torch", "transformers", "datasets", "evaluate", "huggingface-hub"} <= set(on_disk["library_versions"])
    assert results["best_top1"] == on_disk["best_top1"]
    assert yaml.safe_load((run / "recipe.yaml").read_text()) == recipe
    for name in ("loss_curves.png", "accuracy_curves.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC
    # every axis that was drawn is labelled
    assert len(figures) == 2
    for fig in figures:
        for ax in fig.axes:
            assert ax.get_xlabel() == "epoch" and ax.get_ylabel() and ax.get_title()
    loss_fig = figures[0]
    labels = {line.get_label() for ax in loss_fig.axes for line in ax.lines}
    assert {"train task loss (CE)", "test task loss (CE)", "train", "test"} <= labels
    with open(run / "log_history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(fake_log_history([10.0, 30.0, 25.0], sigreg=True))
    assert list(rows[0])[:2] == ["step", "epoch"] and "sigreg_loss" in rows[0] and "eval_top1" in rows[0]


def test_per_epoch_eval_and_record_are_merged(tmp_path):
    log = fake_log_history([10.0, 20.0], sigreg=False)
    record = {"optimizer": "sgd", "best_top1": 1.0, "dataset": "cifar10", "train_images": 5000}
    results = write_run(
        tmp_path, log_history=log, recipe=None, seed=0, epochs=2, per_epoch_eval=[{"epoch": 2, "top1": 22.0}],
        wall_seconds=5.0, images_per_second=100.0, record=record, plots=False,
    )  # fmt: skip
    assert results["test_top1_by_epoch"] == [10.0, 22.0]
    assert results["best_top1"] == 22.0  # computed fields win over the record's
    assert results["optimizer"] == "sgd" and results["dataset"] == "cifar10" and results["train_images"] == 5000
    assert results["wall_seconds"] == 5.0 and results["sigreg_mode"] == "none" and results["sigreg_alpha"] == 0.0
    assert not (tmp_path / "loss_curves.png").exists()


def test_recipe_config_fills_names_and_published_number_only_when_compared(tmp_path):
    """The recipe's model/dataset names fill in whether or not its published number applies to the data."""
    recipe = {"model_name": "mlp", "dataset_name": "uoft-cs/cifar100", "published_top1": 42.17}
    log = fake_log_history([10.0, 20.0], sigreg=False)
    for compare in (True, False):
        results = write_run(tmp_path / str(compare), log_history=log, recipe="mlp_sgd_none", seed=0, epochs=2,
                                    recipe_config=recipe, compare_published=compare, plots=False)  # fmt: skip
        assert results["model_name"] == "mlp" and results["dataset"] == "uoft-cs/cifar100"
        assert results["published_top1"] == (42.17 if compare else None)
    # no recipe config and no comparison: nothing to fill in, nothing to fail on
    results = write_run(tmp_path / "bare", log_history=log, recipe="x", seed=0, epochs=2,
                                compare_published=False, plots=False)  # fmt: skip
    assert results["published_top1"] is None and results["model_name"] is None


def test_run_without_evaluation_still_writes_results(tmp_path):
    log = [{"loss": 2.0, "epoch": 0.5, "step": 1}, {"train_runtime": 1.0, "train_samples_per_second": 10.0}]
    results = write_run(tmp_path, log_history=log, recipe="x", seed=0, epochs=0.5)
    assert results["final_top1"] is None and results["best_top1"] is None and results["test_top1_by_epoch"] == []
    assert (tmp_path / "accuracy_curves.png").is_file()


def _three_runs(tmp_path: Path) -> list[Path]:
    dirs = []
    for mode, curve, published in (("none", [10, 20, 18], 26.77), ("weak", [12, 25, 30], 42.17),
                                   ("strong", [11, 22, 24], 35.99)):  # fmt: skip
        log = fake_log_history([float(x) for x in curve], sigreg=mode != "none")
        write_run(tmp_path / mode, log_history=log, recipe=f"mlp_sgd_{mode}", seed=0, epochs=3,
                          sigreg_mode=mode, sigreg_alpha={"none": None, "weak": 0.1, "strong": 0.01}[mode],
                          published_top1=published)  # fmt: skip
        dirs.append(tmp_path / mode)
    return dirs


def test_collect_results_table_csv_and_overlays(tmp_path):
    dirs = _three_runs(tmp_path)
    runs, table = collect_results(dirs, tmp_path / "cmp")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Run | Recipe | SIGReg |") and "Seed's published top-1" in lines[0]
    assert len(lines) == 2 + 3
    weak = next(line for line in lines if "mlp_sgd_weak" in line)
    assert "weak (a=0.1)" in weak and "| 30.00 |" in weak and "| 42.17 |" in weak and "-12.17" in weak
    assert "strong (a=0.01)" in table and "| none |" in table
    with open(tmp_path / "cmp" / "results_table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["recipe"] for r in rows] == ["mlp_sgd_none", "mlp_sgd_weak", "mlp_sgd_strong"]
    assert float(rows[1]["difference"]) == pytest.approx(-12.17)
    for name in ("overlay_accuracy.png", "overlay_loss.png", "results_table.md"):
        assert (tmp_path / "cmp" / name).is_file()
    assert results_table_markdown(runs) == table


def test_collect_results_script(tmp_path):
    dirs = _three_runs(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "collect_results.py"), *map(str, dirs), "--output_dir",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| mlp_sgd_strong |" in proc.stdout
    assert (tmp_path / "out" / "overlay_accuracy.png").is_file()


def test_load_results_error_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="No results.json"):
        load_results(tmp_path)


def test_library_versions_lists_the_stack():
    versions = library_versions()
    assert versions["torch"] != "not installed" and versions["transformers"] != "not installed"


def test_collect_writes_the_experiment_summary(tmp_path):
    """``--experiment`` writes summary.json in the fixed schema, one entry per run with its whole curve."""
    dirs = _three_runs(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "collect_results.py"), *map(str, dirs), "--output_dir",
         str(tmp_path / "out"), "--experiment", "mlp-subset", "--dataset_label", "cifar10"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["experiment"] == "mlp-subset" and summary["dataset"] == "cifar10"
    keys = {"recipe", "sigreg_mode", "sigreg_alpha", "sigreg_sketch_type", "seed", "train_images", "epochs",
            "test_top1_by_epoch", "final_top1", "best_top1", "wall_seconds"}  # fmt: skip
    assert [set(run) for run in summary["runs"]] == [keys] * 3
    for run, directory in zip(summary["runs"], dirs, strict=True):
        record = load_results(directory)
        assert run["test_top1_by_epoch"] == record["test_top1_by_epoch"]
        assert run["best_top1"] == max(run["test_top1_by_epoch"])
        assert run["sigreg_mode"] == record["sigreg_mode"]


def test_seeds_of_one_setting_are_grouped_and_summarised(tmp_path):
    """Two seeds of weak and one baseline: one group per setting, mean/min/max across seeds, seed column."""
    dirs = []
    for name, mode, seed, curve in (("none", "none", 0, [10.0, 20.0, 18.0]), ("weak0", "weak", 0, [12.0, 25.0, 30.0]),
                                    ("weak1", "weak", 1, [14.0, 21.0, 26.0])):  # fmt: skip
        write_run(tmp_path / name, log_history=fake_log_history(curve, sigreg=mode != "none"),
                          recipe=f"mlp_sgd_{mode}", seed=seed, epochs=3, sigreg_mode=mode,
                          sigreg_alpha=0.1 if mode == "weak" else None)  # fmt: skip
        dirs.append(tmp_path / name)
    runs, table = collect_results(dirs, tmp_path / "cmp")
    assert [[r["seed"] for r in g] for g in group_runs_by_setting(runs)] == [[0], [0, 1]]
    assert "| Seed |" in table.splitlines()[0]
    assert [line.split("|")[4].strip() for line in table.strip().splitlines()[2:]] == ["0", "0", "1"]
    summary = experiment_summary(runs, experiment="x")
    assert len(summary["runs"]) == 3
    (weak,) = summary["across_seeds"]  # the single-seed baseline has no aggregate
    assert weak["recipe"] == "mlp_sgd_weak" and weak["seeds"] == [0, 1]
    assert weak["final_top1"] == pytest.approx({"mean": 28.0, "min": 26.0, "max": 30.0})
    assert weak["best_top1"] == pytest.approx({"mean": 28.0, "min": 26.0, "max": 30.0})
    assert weak["test_top1_by_epoch_mean"] == pytest.approx([13.0, 23.0, 28.0])
    for name in ("overlay_accuracy.png", "overlay_loss.png"):
        assert (tmp_path / "cmp" / name).read_bytes().startswith(PNG_MAGIC)


def test_overlay_draws_each_seed_and_their_mean(tmp_path, monkeypatch):
    """The accuracy overlay has a thin line per seed and one labelled mean line for a multi-seed setting."""
    dirs = []
    for seed, curve in ((0, [12.0, 25.0, 20.0]), (1, [14.0, 21.0, 26.0])):
        write_run(tmp_path / f"s{seed}", log_history=fake_log_history(curve, sigreg=True),
                          recipe="mlp_sgd_weak", seed=seed, epochs=3, sigreg_mode="weak", sigreg_alpha=0.1)  # fmt: skip
        dirs.append(tmp_path / f"s{seed}")
    figures = []
    real_figure = plots_module._figure
    monkeypatch.setattr(plots_module, "_figure", lambda *a, **k: figures.append(real_figure(*a, **k)) or figures[-1])
    plots_module.plot_overlay([load_results(d) for d in dirs], tmp_path / "out")
    per_epoch, best_so_far = figures[0].axes
    for ax, mean in ((per_epoch, [13.0, 23.0, 23.0]), (best_so_far, [13.0, 23.0, 25.5])):
        lines = ax.get_lines()
        assert len(lines) == 3
        labelled = [line for line in lines if not line.get_label().startswith("_")]
        assert len(labelled) == 1 and "mean of 2 seeds" in labelled[0].get_label()
        assert list(labelled[0].get_ydata()) == pytest.approx(mean)
    # best-so-far is the running maximum of each seed's curve
    seeds_best = sorted(list(line.get_ydata()) for line in best_so_far.get_lines()[:2])
    assert seeds_best == [[12.0, 25.0, 25.0], [14.0, 21.0, 26.0]]


# --------------------------------------------------------------------------------------------------
# RunRecord: the one reader/writer of results.json
# --------------------------------------------------------------------------------------------------
def test_run_record_round_trips_through_results_json(tmp_path):
    record = RunRecord.from_log_history(
        fake_log_history([10.0, 30.0, 25.0], sigreg=True), run_name="r", recipe="mlp_sgd_weak", seed=2, epochs=3,
        recipe_config={"model_name": "mlp", "sigreg_mode": "weak", "sigreg_alpha": 0.1, "published_top1": 42.17},
        settings={"optimizer": "sgd", "evaluations": [{"epoch": 1.0, "top1": 10.0}], "best_top1": -1.0},
    )  # fmt: skip
    path = record.save(tmp_path)
    loaded = RunRecord.load(tmp_path)
    assert loaded == record  # every field, the settings and the per-epoch table survive
    assert loaded.run_dir == tmp_path and path == tmp_path / "results.json"
    assert json.loads(path.read_text()) == record.to_dict()
    assert loaded.best_top1 == 30.0 and loaded.final_top1 == 25.0  # derived, never read back
    assert "best_top1" not in loaded.settings and loaded.settings["optimizer"] == "sgd"
    assert loaded.sigreg_mode == "weak" and loaded.sigreg_alpha == 0.1 and loaded.model_name == "mlp"


def test_run_record_derives_accuracies_from_the_table_and_refuses_to_set_them():
    record = RunRecord.from_log_history(fake_log_history([10.0, 30.0], sigreg=False), run_name="r")
    record.per_epoch[0]["test_top1"] = 50.0  # edit the table: the summary follows
    view = record.to_dict()
    assert view["best_top1"] == 50.0 and view["best_epoch"] == 1 and view["test_top1_by_epoch"] == [50.0, 30.0]
    record.update(dataset="sklearn-digits", digits_split={"seed": 0})
    assert record.dataset == "sklearn-digits" and record.to_dict()["digits_split"] == {"seed": 0}
    for key in ("best_top1", "final_top1", "losses"):
        assert key in DERIVED_KEYS
        with pytest.raises(ValueError, match="computed from the per-epoch table"):
            record.update(**{key: 1.0})
    with pytest.raises(ValueError, match="sigreg_mode must be one of"):
        RunRecord(run_name="r", sigreg_mode="medium")


def results_json_accesses(source: str) -> list[str]:
    """``open(...)`` / ``.read_text()`` / ``.write_text()`` / ``json.load(s)`` calls that name results.json."""
    names = ("RESULTS_FILE", "results_file", "results.json")
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_open = isinstance(func, ast.Name) and func.id == "open"
        is_path_io = isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text", "read_bytes")
        target = node.args[0] if is_open and node.args else func.value if is_path_io else None
        if target is not None and any(n in ast.unparse(target) for n in names):
            found.append(ast.unparse(node))
    return found


def test_only_the_record_module_reads_or_writes_results_json():
    """No module of the app but record.py opens results.json itself (RunRecord.load/save are the only way)."""
    assert results_json_accesses('open(run_dir / RESULTS_FILE, "w")\n(d / "results.json").read_text()') != []
    app = REPO / "sigreg_hf" / "experiments"
    offenders = {path.relative_to(app).as_posix(): results_json_accesses(path.read_text())
                 for path in app.rglob("*.py")}  # fmt: skip
    assert {name: calls for name, calls in offenders.items() if calls and name != "record.py"} == {}
