"""A run folder's files, all functions of its :class:`~sigreg_hf.experiments.record.RunRecord`.

:func:`write_run_outputs` is called once at the end of a run (``sigreg-hf train``, the quickstart) and writes:

* ``results.json`` - the record (:meth:`RunRecord.save`, its only writer);
* ``log_history.csv`` - every entry of ``trainer.state.log_history``, one row each;
* ``loss_curves.png`` / ``accuracy_curves.png`` - the run's curves (:func:`~sigreg_hf.experiments.plots.plot_run`);
* ``recipe.yaml`` - the recipe's settings, when the record has them.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sigreg_hf.experiments.plots import plot_run
from sigreg_hf.experiments.record import LOG_CSV_FILE, RECIPE_FILE, RESULTS_FILE, RunRecord

__all__ = ["write_log_history_csv", "write_run_outputs"]


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



def write_run_outputs(
    record: RunRecord, output_dir: str | Path, *, plots: bool = True, results_file: str = RESULTS_FILE
) -> RunRecord:
    """Write the run folder's files for ``record`` into ``output_dir`` (created if needed); returns the record.

    ``results_file`` names the results JSON (default ``results.json``). The record's ``files`` lists what was
    written besides it.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if record.recipe_config is not None:
        with open(output_dir / RECIPE_FILE, "w", encoding="utf-8") as fh:
            yaml.safe_dump(record.recipe_config, fh, sort_keys=True)
        record.files["recipe"] = RECIPE_FILE
    write_log_history_csv(record.log_history, output_dir / LOG_CSV_FILE)
    record.files["log_history"] = LOG_CSV_FILE
    if plots:
        record.files.update(plot_run(record, output_dir))
    record.save(output_dir, results_file)
    return record
