"""Recipes: one YAML per row of the seed's CIFAR-100 tables, loaded and validated here.

A recipe is a flat mapping of command-line field names (``SIGRegConfig`` / TrainingArguments fields and
the fields of :mod:`sigreg_hf.experiments.train_args`) to values; ``scripts/train.py --recipe NAME`` uses them as
defaults, and command-line arguments override them. Recipes ship inside this package as package data
(found with :mod:`importlib.resources`, so a wheel install has them too; override the folder with the
``SIGREG_RECIPES_DIR`` environment variable); names follow
``{resnet18|vit|vitpeak|mlp}_{sgd|adamw|muon}[_mix]_{none|weak|strong}``.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sigreg_hf.config import SIGRegConfig
from sigreg_hf.experiments.train_args import CLI_DATACLASSES, field_names

RECIPE_NAME_RE = re.compile(r"(resnet18|vit|vitpeak|mlp)_(sgd|adamw|muon)(_mix)?_(none|weak|strong)")

#: Keys every recipe must set.
REQUIRED_KEYS = (
    "model_name",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "num_train_epochs",
    "per_device_train_batch_size",
    "lr_schedule",
    "max_grad_norm",
    "mean_std",
    "mix",
    "randaugment_num_ops",
    "sigreg_mode",
    "sigreg_alpha",
    "sigreg_sketch_dim",
    "sigreg_layers",
    "published_top1",
)

#: The seed's tables: recipe name -> published top-1 (%, best over epochs on the CIFAR-100 test set).
PUBLISHED_TOP1: dict[str, float] = {
    "resnet18_sgd_none": 79.03, "resnet18_sgd_strong": 78.86, "resnet18_sgd_weak": 79.42,
    "resnet18_sgd_mix_none": 82.13, "resnet18_sgd_mix_strong": 81.18, "resnet18_sgd_mix_weak": 82.13,
    "vit_adamw_mix_none": 20.73, "vit_adamw_mix_strong": 70.20, "vit_adamw_mix_weak": 72.02,
    "vit_muon_none": 58.77, "vit_muon_strong": 63.16, "vit_muon_weak": 67.52,
    "vit_muon_mix_none": 62.44, "vit_muon_mix_strong": 74.34, "vit_muon_mix_weak": 74.56,
    "vitpeak_adamw_mix_none": 70.76, "vitpeak_adamw_mix_strong": 72.71, "vitpeak_adamw_mix_weak": 71.65,
    "vitpeak_muon_mix_none": 75.87, "vitpeak_muon_mix_strong": 76.98, "vitpeak_muon_mix_weak": 76.24,
    "mlp_sgd_none": 26.77, "mlp_sgd_strong": 35.99, "mlp_sgd_weak": 42.17,
    "mlp_sgd_mix_none": 38.08, "mlp_sgd_mix_strong": 38.70, "mlp_sgd_mix_weak": 38.40,
}  # fmt: skip


class RecipeError(ValueError):
    """A recipe is missing, malformed, or names unknown fields."""


def recipes_dir() -> Path:
    """The recipe folder: ``$SIGREG_RECIPES_DIR`` or the YAML files shipped in this package."""
    env = os.environ.get("SIGREG_RECIPES_DIR")
    return Path(env) if env else Path(str(resources.files(__name__)))


def list_recipes(directory: str | Path | None = None) -> list[str]:
    """Sorted names of the recipes (YAML files) in ``directory`` (default :func:`recipes_dir`)."""
    folder = Path(directory) if directory is not None else recipes_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def allowed_keys() -> set[str]:
    """Every field a recipe may set (SIGRegConfig + the CLI dataclasses)."""
    return field_names(SIGRegConfig, *CLI_DATACLASSES)


def validate_recipe(recipe: dict[str, Any], *, name: str = "<recipe>") -> dict[str, Any]:
    """Check keys and basic values; return a copy ready for ``ArgumentParser.set_defaults``.

    ``model_overrides`` given as a mapping is turned into its JSON string; ``sigreg_layers`` given as a
    string becomes a one-element list.
    """
    if not isinstance(recipe, dict):
        raise RecipeError(f"Recipe {name!r} must be a mapping of field names to values, got {type(recipe).__name__}.")
    unknown = sorted(set(recipe) - allowed_keys())
    if unknown:
        raise RecipeError(
            f"Recipe {name!r} sets unknown fields {unknown}; every key must be a command-line field of "
            "scripts/train.py (see `python scripts/train.py --help`)."
        )
    out = dict(recipe)
    if isinstance(out.get("model_overrides"), dict):
        out["model_overrides"] = json.dumps(out["model_overrides"])
    if isinstance(out.get("sigreg_layers"), str):
        out["sigreg_layers"] = [out["sigreg_layers"]]
    mode, alpha = out.get("sigreg_mode"), out.get("sigreg_alpha")
    if mode is not None and mode not in ("none", "weak", "strong"):
        raise RecipeError(f"Recipe {name!r}: sigreg_mode must be none, weak or strong, got {mode!r}.")
    if mode in ("weak", "strong") and not alpha:
        raise RecipeError(f"Recipe {name!r}: sigreg_mode={mode} needs a positive sigreg_alpha.")
    return out


def load_recipe(name_or_path: str, *, strict: bool = True) -> dict[str, Any]:
    """Load and validate a recipe by name (from :func:`recipes_dir`) or from a YAML path.

    With ``strict`` (default), a recipe with a canonical table name must set :data:`REQUIRED_KEYS`.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = recipes_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        available = list_recipes()
        raise RecipeError(
            f"Recipe {name_or_path!r} not found (looked for {path}). Available: {', '.join(available) or 'none'}."
        )
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise RecipeError(f"Recipe file {path} is not valid YAML{line}: {problem}.") from err
    recipe = validate_recipe(data, name=path.stem)
    if strict and RECIPE_NAME_RE.fullmatch(path.stem):
        missing = [k for k in REQUIRED_KEYS if k not in recipe]
        if missing:
            raise RecipeError(f"Recipe {path.stem!r} lacks required fields {missing}.")
    return recipe
