"""One run's record, :class:`RunRecord`: the only code that reads or writes ``results.json``.

A record is built once at the end of a run (:meth:`RunRecord.from_trainer`, or
:meth:`RunRecord.from_log_history` for a log history at hand), saved with :meth:`RunRecord.save` and read
back with :meth:`RunRecord.load`. The accuracies (final and best epoch, per-epoch curves) and the loss
summary are derived from the per-epoch table whenever the record is written, so they cannot drift from it.
Plots, the log CSV, model cards and result tables are functions of a record (see
:mod:`sigreg_hf.experiments.run_outputs`, :mod:`sigreg_hf.experiments.plots`,
:mod:`sigreg_hf.experiments.card` and :mod:`sigreg_hf.experiments.collect`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from sigreg_hf.redaction import redact_command_line

__all__ = [
    "ACCURACY_PLOT_FILE",
    "LOG_CSV_FILE",
    "LOSS_PLOT_FILE",
    "RECIPE_FILE",
    "RESULTS_FILE",
    "RunRecord",
    "as_results",
    "epoch_table",
    "group_runs_by_setting",
    "library_versions",
    "load_results",
    "setting_key",
    "sigreg_mode_of",
]

RESULTS_FILE = "results.json"
LOG_CSV_FILE = "log_history.csv"
LOSS_PLOT_FILE = "loss_curves.png"
ACCURACY_PLOT_FILE = "accuracy_curves.png"
RECIPE_FILE = "recipe.yaml"
SCHEMA_VERSION = 1
SIGREG_MODES = ("none", "weak", "strong")

#: Distributions whose versions every results.json records.
_LIBRARIES = (
    "sigreg_hf", "torch", "torchvision", "transformers", "accelerate", "datasets", "evaluate", "timm",
    "huggingface-hub", "safetensors", "numpy", "scikit-learn", "matplotlib",
)  # fmt: skip

#: Keys of results.json computed from the per-epoch table on every save (never read back as fields).
DERIVED_KEYS = (
    "schema_version", "accuracy_unit", "test_accuracy_final_epoch", "test_accuracy_best_epoch", "accuracy_note",
    "final_top1", "final_top5", "best_top1", "best_top5", "best_epoch", "test_top1_by_epoch", "test_top5_by_epoch",
    "evaluated_epochs", "best_minus_published_top1", "losses", "run_dir",
)  # fmt: skip

_ACCURACY_NOTE = (
    "test_accuracy_best_epoch / best_top1: the best test top-1 over all evaluated epochs (model selection on the "
    "test set, which is what the seed's tables report as 'Top-1 Acc'); test_accuracy_final_epoch / final_top1: "
    "the last evaluated epoch (the saved weights)"
)
_LOSSES_NOTE = (
    "means over the last epoch's training logs and its test evaluation; sigreg losses are the unweighted "
    "statistic (mean over tapped layers), task losses the cross-entropy"
)
_EMPTY_ROW = dict.fromkeys(
    ("train_loss", "train_task_loss", "train_sigreg_loss", "train_top1", "test_loss", "test_task_loss",
     "test_sigreg_loss", "test_top1", "test_top5")
)  # fmt: skip


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on (plus Python), ``"not installed"`` if absent."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _last_value(log_history: Sequence[Mapping[str, Any]], key: str) -> float | None:
    for entry in reversed(log_history):
        if key in entry:
            return finite_or_none(entry[key])
    return None


def sigreg_mode_of(results: RunRecord | Mapping[str, Any]) -> str:
    """``"none"`` / ``"weak"`` / ``"strong"`` for a record (its field, else the recipe-name suffix)."""
    if isinstance(results, RunRecord):
        results = {"sigreg_mode": results.sigreg_mode, "recipe": results.recipe}
    mode = results.get("sigreg_mode")
    if mode in SIGREG_MODES:
        return str(mode)
    match = re.search(r"_(none|weak|strong)$", str(results.get("recipe") or ""))
    return match.group(1) if match else "none"


# --------------------------------------------------------------------------------------------------
# log history -> per-epoch table
# --------------------------------------------------------------------------------------------------
def _epoch_index(epoch: Any) -> int | None:
    """The 1-based epoch a log entry belongs to: a log at fractional epoch 0.4 or exactly 1.0 is epoch 1."""
    value = finite_or_none(epoch)
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
            loss = finite_or_none(entry.get("loss"))
            bucket["loss"].append(loss)
            bucket["task"].append(finite_or_none(entry["task_loss"]) if "task_loss" in entry else loss)
            bucket["sigreg"].append(finite_or_none(entry.get("sigreg_loss")))
            bucket["top1"].append(finite_or_none(entry.get("train_top1", entry.get("train_top1_vs_dominant_label"))))
    rows = []
    for ep in sorted(set(train) | set(evals)):
        bucket = train.get(ep, {"loss": [], "task": [], "sigreg": [], "top1": []})
        ev = evals.get(ep, {})
        eval_loss = finite_or_none(ev.get("eval_loss"))
        rows.append(
            {
                "epoch": ep,
                "train_loss": _mean(bucket["loss"]),
                "train_task_loss": _mean(bucket["task"]),
                "train_sigreg_loss": _mean(bucket["sigreg"]),
                "train_top1": _mean(bucket["top1"]),
                "test_loss": eval_loss,
                "test_task_loss": finite_or_none(ev["eval_task_loss"]) if "eval_task_loss" in ev else eval_loss,
                "test_sigreg_loss": finite_or_none(ev.get("eval_sigreg_loss")),
                "test_top1": finite_or_none(ev.get("eval_top1")),
                "test_top5": finite_or_none(ev.get("eval_top5")),
            }
        )
    return rows


def _merge_per_epoch_eval(
    rows: list[dict[str, Any]], per_epoch_eval: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Caller-given evaluations (keys epoch, top1/test_top1/eval_top1, top5..., loss...) override ``rows``."""
    by_epoch = {row["epoch"]: row for row in rows}
    for i, item in enumerate(per_epoch_eval, start=1):
        ep = int(item.get("epoch", i))

        def pick(*names: str, _item: Mapping[str, Any] = item) -> float | None:
            for name in names:
                if name in _item:
                    return finite_or_none(_item[name])
            return None

        values = {
            "test_top1": pick("test_top1", "eval_top1", "top1"),
            "test_top5": pick("test_top5", "eval_top5", "top5"),
            "test_loss": pick("test_loss", "eval_loss", "loss"),
            "test_task_loss": pick("test_task_loss", "eval_task_loss", "task_loss"),
            "test_sigreg_loss": pick("test_sigreg_loss", "eval_sigreg_loss", "sigreg_loss"),
        }
        row = by_epoch.setdefault(ep, {"epoch": ep, **_EMPTY_ROW})
        row.update({k: v for k, v in values.items() if v is not None})
    return [by_epoch[ep] for ep in sorted(by_epoch)]


# --------------------------------------------------------------------------------------------------
# the record
# --------------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What one training run produced, as stored in its ``results.json``.

    Accuracies are percentages. The final/best-epoch blocks, the per-epoch accuracy lists and the loss summary
    are properties computed from :attr:`per_epoch`. ``settings`` holds every other recorded field (optimizer,
    learning rate, evaluations, throughput details, dataset labels, ...), kept at the top level of the JSON.
    ``log_history`` (the Trainer's, when known) is not part of ``results.json``: it goes to ``log_history.csv``.
    """

    run_name: str
    recipe: str | None = None
    model_name: str | None = None
    dataset: str | None = None
    sigreg_mode: str = "none"
    sigreg_alpha: float = 0.0
    seed: int = 0
    epochs: float | None = None
    train_images: int | None = None
    eval_images: int | None = None
    evaluation_split: str = "test"
    published_top1: float | None = None
    per_epoch: list[dict[str, Any]] = field(default_factory=list)
    train_loss_mean_over_run: float | None = None
    wall_seconds: float | None = None
    images_per_second: float | None = None
    command: str | None = None
    recipe_config: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=library_versions)
    created_utc: str = field(default_factory=_utc_now)
    files: dict[str, str] = field(default_factory=lambda: {"log_history": LOG_CSV_FILE})
    log_history: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)
    run_dir: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.command:  # never record a secret (the card copies the command, the push uploads both)
            self.command = redact_command_line(self.command)
        if self.sigreg_mode not in SIGREG_MODES:
            raise ValueError(f"sigreg_mode must be one of {SIGREG_MODES}, got {self.sigreg_mode!r}.")
        if self.sigreg_mode == "none":
            self.sigreg_alpha = 0.0

    # ---------------------------------------------------------------------------------------- building
    @classmethod
    def from_log_history(
        cls,
        log_history: Sequence[Mapping[str, Any]],
        *,
        run_name: str,
        recipe: str | None = None,
        seed: int = 0,
        epochs: float | None = None,
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
        extra: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        compare_published: bool = True,
    ) -> RunRecord:
        """A record from a Trainer log history (train logs with ``loss`` / ``task_loss`` / ``sigreg_loss``,
        evaluations with ``eval_loss`` / ``eval_top1`` / ``eval_top5`` in percent).

        Args:
            per_epoch_eval: evaluations per epoch (``epoch`` and ``top1``/``top5``/``loss`` or their
                ``eval_``/``test_`` forms) that override the log history for those epochs.
            published_top1: the seed's published top-1; default ``settings`` then ``recipe_config``'s.
            recipe_config: the recipe's settings; fills names, mode and alpha that are not given.
            settings: other fields to record (e.g. the training CLI's configuration facts); the named
                arguments fall back to them.
            compare_published: False when the run's data is not the data the published number was measured
                on (e.g. a CIFAR-100 recipe trained on CIFAR-10): no published number, no difference.
            wall_seconds, images_per_second: default ``train_runtime`` / ``train_samples_per_second`` of the log.
        """
        log_history = [dict(entry) for entry in log_history]
        given = {k: v for k, v in (settings or {}).items() if k not in DERIVED_KEYS}
        recipe_config = dict(recipe_config) if recipe_config is not None else None
        model_name = model_name or given.get("model_name")
        dataset_name = dataset_name or given.get("dataset")
        sigreg_mode = sigreg_mode or given.get("sigreg_mode")
        sigreg_alpha = sigreg_alpha if sigreg_alpha is not None else given.get("sigreg_alpha")
        train_images = train_images if train_images is not None else given.get("train_images")
        eval_images = eval_images if eval_images is not None else given.get("eval_images")
        published_top1 = published_top1 if published_top1 is not None else given.get("published_top1")
        if recipe_config is not None:
            published_top1 = published_top1 if published_top1 is not None else recipe_config.get("published_top1")
            sigreg_mode = sigreg_mode or recipe_config.get("sigreg_mode")
            if sigreg_alpha is None and recipe_config.get("sigreg_mode", "none") != "none":
                sigreg_alpha = recipe_config.get("sigreg_alpha")
            model_name = model_name or recipe_config.get("model_name")
            dataset_name = dataset_name or recipe_config.get("dataset_name")
        rows = epoch_table(log_history)
        if per_epoch_eval:
            rows = _merge_per_epoch_eval(rows, per_epoch_eval)
        named = {f.name for f in dataclasses.fields(cls)}
        return cls(
            run_name=run_name,
            recipe=recipe,
            model_name=model_name,
            dataset=dataset_name,
            sigreg_mode=sigreg_mode or "none",
            sigreg_alpha=float(sigreg_alpha) if sigreg_alpha else 0.0,
            seed=seed,
            epochs=epochs,
            train_images=train_images,
            eval_images=eval_images,
            published_top1=published_top1 if compare_published else None,
            per_epoch=rows,
            train_loss_mean_over_run=_last_value(log_history, "train_loss"),
            wall_seconds=(
                finite_or_none(wall_seconds) if wall_seconds is not None else _last_value(log_history, "train_runtime")
            ),
            images_per_second=(
                finite_or_none(images_per_second)
                if images_per_second is not None
                else _last_value(log_history, "train_samples_per_second")
            ),
            command=command,
            recipe_config=recipe_config,
            extra=dict(extra) if extra else None,
            settings={k: v for k, v in given.items() if k not in named},
            log_history=log_history,
        )

    @classmethod
    def from_trainer(cls, trainer: Any, *, run_name: str | None = None, **kwargs: Any) -> RunRecord:
        """A record from a trained ``Trainer``: its log history, seed, epoch and SIGReg settings.

        ``run_name`` defaults to the output folder's name; other keyword arguments as for
        :meth:`from_log_history` (they win over what the trainer says).
        """
        args = trainer.args
        mode = getattr(args, "sigreg_mode", "none")
        kwargs.setdefault("seed", args.seed)
        kwargs.setdefault("epochs", round(float(trainer.state.epoch or 0.0), 4))
        kwargs.setdefault("sigreg_mode", mode)
        if mode != "none":
            kwargs.setdefault("sigreg_alpha", getattr(args, "sigreg_alpha", None))
        return cls.from_log_history(
            trainer.state.log_history, run_name=run_name or Path(args.output_dir).resolve().name, **kwargs
        )

    def update(self, **values: Any) -> RunRecord:
        """Set fields (named ones as attributes, anything else in :attr:`settings`); returns ``self``.

        This is how a caller labels a run (e.g. the quickstart's portable dataset name) before it is saved.
        """
        named = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key in DERIVED_KEYS:
                raise ValueError(f"{key!r} is computed from the per-epoch table; change per_epoch instead.")
            if key in named:
                setattr(self, key, value)
            else:
                self.settings[key] = value
        self.__post_init__()
        return self

    # ---------------------------------------------------------------------------------------- derived
    @property
    def evaluated(self) -> list[dict[str, Any]]:
        """The per-epoch rows with a test top-1."""
        return [row for row in self.per_epoch if row.get("test_top1") is not None]

    @property
    def final(self) -> dict[str, Any] | None:
        """The last evaluated epoch's row (the saved weights)."""
        rows = self.evaluated
        return rows[-1] if rows else None

    @property
    def best(self) -> dict[str, Any] | None:
        """The row with the highest test top-1 (earliest on ties)."""
        rows = self.evaluated
        return max(rows, key=lambda r: (r["test_top1"], -r["epoch"])) if rows else None

    @property
    def final_top1(self) -> float | None:
        return self.final["test_top1"] if self.final else None

    @property
    def best_top1(self) -> float | None:
        return self.best["test_top1"] if self.best else None

    # ---------------------------------------------------------------------------------------- (de)serialising
    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` content: the fields, the derived accuracies and losses, then ``settings``."""

        def block(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
            if row is None:
                return None
            return {"epoch": row["epoch"], "top1": row["test_top1"], "top5": row.get("test_top5"),
                    "loss": row.get("test_loss")}  # fmt: skip

        final, best, evaluated = self.final, self.best, self.evaluated
        last = self.per_epoch[-1] if self.per_epoch else {}
        best_top1 = best["test_top1"] if best else None
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_name": self.run_name,
            "recipe": self.recipe,
            "model_name": self.model_name,
            "dataset": self.dataset,
            "sigreg_mode": self.sigreg_mode,
            "sigreg_alpha": self.sigreg_alpha,
            "seed": self.seed,
            "epochs": self.epochs,
            "train_images": self.train_images,
            "eval_images": self.eval_images,
            "accuracy_unit": "percent",
            "evaluation_split": self.evaluation_split,
            "test_accuracy_final_epoch": block(final),
            "test_accuracy_best_epoch": block(best),
            "accuracy_note": _ACCURACY_NOTE,
            "final_top1": final["test_top1"] if final else None,
            "final_top5": final.get("test_top5") if final else None,
            "best_top1": best_top1,
            "best_top5": best.get("test_top5") if best else None,
            "best_epoch": best["epoch"] if best else None,
            "test_top1_by_epoch": [row["test_top1"] for row in evaluated],
            "test_top5_by_epoch": [row.get("test_top5") for row in evaluated],
            "evaluated_epochs": [row["epoch"] for row in evaluated],
            "published_top1": self.published_top1,
            "best_minus_published_top1": (
                round(best_top1 - self.published_top1, 4)
                if best_top1 is not None and self.published_top1 is not None
                else None
            ),
            "losses": {
                "epoch": last.get("epoch"),
                **{k: last.get(k) for k in ("train_loss", "train_task_loss", "train_sigreg_loss", "test_loss",
                                            "test_task_loss", "test_sigreg_loss")},  # fmt: skip
                "train_loss_mean_over_run": self.train_loss_mean_over_run,
                "note": _LOSSES_NOTE,
            },
            "wall_seconds": self.wall_seconds,
            "images_per_second": self.images_per_second,
            "per_epoch": [dict(row) for row in self.per_epoch],
            "command": self.command,
            "library_versions": dict(self.library_versions),
            "created_utc": self.created_utc,
            "files": dict(self.files),
        }
        if self.recipe_config is not None:
            out["recipe_config"] = dict(self.recipe_config)
        if self.extra:
            out["extra"] = dict(self.extra)
        for key, value in self.settings.items():
            if out.get(key) is None:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, run_dir: str | Path | None = None) -> RunRecord:
        """The record a :meth:`to_dict` mapping (a ``results.json``) describes; derived keys are recomputed."""
        named = {f.name for f in dataclasses.fields(cls)} - {"settings", "log_history", "run_dir"}
        data = dict(data)
        losses = data.get("losses") or {}
        fields = {k: data[k] for k in named if k in data and k != "train_loss_mean_over_run"}
        fields["train_loss_mean_over_run"] = losses.get("train_loss_mean_over_run")
        if fields.get("sigreg_mode") not in SIGREG_MODES:
            fields["sigreg_mode"] = sigreg_mode_of(data)
        fields["sigreg_alpha"] = float(fields.get("sigreg_alpha") or 0.0)
        fields.setdefault("run_name", Path(str(run_dir)).name if run_dir is not None else "run")
        settings = {k: v for k, v in data.items() if k not in named and k not in DERIVED_KEYS}
        return cls(**fields, settings=settings, run_dir=Path(run_dir) if run_dir is not None else None)

    def save(self, output_dir: str | Path, filename: str = RESULTS_FILE) -> Path:
        """Write ``output_dir/filename`` (default ``results.json``); returns its path."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / filename
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, allow_nan=False)
            fh.write("\n")
        self.run_dir = output_dir
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord:
        """Read ``RUN_DIR/results.json`` (or a results JSON path)."""
        path = Path(run_dir)
        if path.is_dir():
            path = path / RESULTS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"No {RESULTS_FILE} at {path}: pass run directories written by `sigreg-hf train` "
                "(scripts/train.py) or the quickstart."
            )
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return cls.from_dict(data, run_dir=path.parent)


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The JSON view of :meth:`RunRecord.load` with ``run_dir`` added (for tables and cards)."""
    return dict(as_results(RunRecord.load(run_dir)))


def as_results(run: RunRecord | Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``results.json`` view of a record (with ``run_dir`` when known); a mapping is returned as is."""
    if not isinstance(run, RunRecord):
        return run
    view = run.to_dict()
    if run.run_dir is not None:
        view["run_dir"] = str(run.run_dir)
    return view


def setting_key(run: RunRecord | Mapping[str, Any], index: int = 0) -> tuple[str, str, float | None, str]:
    """What a run's setting is, seed aside: recipe (else run name), mode, alpha and sketch type."""
    run = as_results(run)
    name = str(run.get("recipe") or run.get("run_name") or f"run {index}")
    mode = sigreg_mode_of(run)
    alpha = run.get("sigreg_alpha") if mode != "none" else None
    sketch = (run.get("sigreg_sketch_type") or "gaussian") if mode != "none" else ""
    return name, mode, (float(alpha) if alpha is not None else None), sketch


def group_runs_by_setting(runs: Sequence[Any]) -> list[list[Any]]:
    """Runs (records or their views) that differ only in their seed, grouped (first-seen order): same recipe
    (else run name), mode, alpha and sketch type."""
    groups: dict[tuple[str, str, float | None, str], list[Any]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(setting_key(run, i), []).append(run)
    return list(groups.values())
