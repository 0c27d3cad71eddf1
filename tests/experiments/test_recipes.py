"""The 27 recipes: they exist, load, and carry the reference settings of their table row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sigreg_hf.experiments.recipes import (
    PUBLISHED_TOP1,
    RECIPE_NAME_RE,
    RecipeError,
    list_recipes,
    load_recipe,
    validate_recipe,
)

ALL = sorted(PUBLISHED_TOP1)

#: The seed's tables, row by row: (model, optimiser, CutMix/MixUp, SIGReg, epochs, top-1).
SEED_TABLE = [
    ("resnet18", "sgd", False, "none", 1600, 79.03), ("resnet18", "sgd", False, "strong", 1600, 78.86),
    ("resnet18", "sgd", False, "weak", 1600, 79.42), ("resnet18", "sgd", True, "none", 400, 82.13),
    ("resnet18", "sgd", True, "strong", 400, 81.18), ("resnet18", "sgd", True, "weak", 400, 82.13),
    ("vit", "adamw", True, "none", 400, 20.73), ("vit", "adamw", True, "strong", 400, 70.20),
    ("vit", "adamw", True, "weak", 400, 72.02), ("vit", "muon", False, "none", 400, 58.77),
    ("vit", "muon", False, "strong", 400, 63.16), ("vit", "muon", False, "weak", 400, 67.52),
    ("vit", "muon", True, "none", 400, 62.44), ("vit", "muon", True, "strong", 400, 74.34),
    ("vit", "muon", True, "weak", 400, 74.56), ("vitpeak", "adamw", True, "none", 400, 70.76),
    ("vitpeak", "adamw", True, "strong", 400, 72.71), ("vitpeak", "adamw", True, "weak", 400, 71.65),
    ("vitpeak", "muon", True, "none", 400, 75.87), ("vitpeak", "muon", True, "strong", 400, 76.98),
    ("vitpeak", "muon", True, "weak", 400, 76.24), ("mlp", "sgd", False, "none", 400, 26.77),
    ("mlp", "sgd", False, "strong", 400, 35.99), ("mlp", "sgd", False, "weak", 400, 42.17),
    ("mlp", "sgd", True, "none", 400, 38.08), ("mlp", "sgd", True, "strong", 400, 38.70),
    ("mlp", "sgd", True, "weak", 400, 38.40),
]  # fmt: skip


def _name(model: str, opt: str, mix: bool, mode: str) -> str:
    return f"{model}_{opt}{'_mix' if mix else ''}_{mode}"


def test_all_27_recipes_exist_and_nothing_else() -> None:
    names = list_recipes()
    assert len(names) == 27 and names == ALL
    assert all(RECIPE_NAME_RE.fullmatch(n) for n in names)
    assert sorted(_name(*row[:4]) for row in SEED_TABLE) == ALL


@pytest.mark.parametrize("row", SEED_TABLE, ids=lambda r: _name(*r[:4]))
def test_recipe_matches_seed_table_row(row: tuple) -> None:
    model, opt, mix, mode, epochs, top1 = row
    r = load_recipe(_name(model, opt, mix, mode))
    assert r["published_top1"] == top1
    assert r["num_train_epochs"] == epochs
    assert r["mix"] is mix and r["optimizer"] == opt
    assert r["per_device_train_batch_size"] == 128
    assert r["sigreg_mode"] == mode and r["sigreg_weighting"] == "convex"
    assert r["sigreg_alpha"] == {"none": 0.0, "weak": 0.1, "strong": 0.01}[mode]
    assert r["sigreg_sketch_dim"] == 64 and r["sigreg_layers"] == ["auto"]
    assert (r["image_size"], r["crop_padding"], r["hflip"]) == (32, 4, True)
    if mix:
        assert (r["mixup_alpha"], r["cutmix_alpha"], r["mix_prob"], r["mix_switch_prob"]) == (0.8, 1.0, 1.0, 0.5)
    assert r["dataset_name"] == "uoft-cs/cifar100"
    assert isinstance(r.get("notes"), str) and r["notes"]


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("resnet18")])
def test_resnet18_settings(name: str) -> None:
    r = load_recipe(name)
    assert r["model_name"] == "resnet18_cifar"
    assert (r["learning_rate"], r["momentum"], r["weight_decay"]) == (0.1, 0.9, 5e-4)
    assert (r["lr_schedule"], r["lr_schedule_interval"], r["eta_min"]) == ("cosine", "epoch", 0.0)
    assert r["max_grad_norm"] == 0.0 and r["randaugment_num_ops"] == 0 and r["mean_std"] == "cifar100_full"


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("vit_")])
def test_first_round_vit_settings(name: str) -> None:
    r = load_recipe(name)
    assert r["model_name"] == "vit_rope" and r["mean_std"] == "cifar100_full"
    assert (r["randaugment_num_ops"], r["randaugment_magnitude"]) == (2, 9)
    assert r["lr_schedule"] == "cosine" and r["weight_decay"] == 5e-4
    if r["optimizer"] == "adamw":
        assert r["learning_rate"] == 1e-3
    else:
        assert r["learning_rate"] == 1e-2 and r["aux_learning_rate"] == 1e-3
        assert (r["aux_adam_beta1"], r["aux_adam_beta2"]) == (0.9, 0.95) and r["muon_params"] == "all_2d"


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("vitpeak_")])
def test_peak_vit_settings(name: str) -> None:
    r = load_recipe(name)
    assert r["model_name"] == "vit_peak" and r["mean_std"] == "cifar100_peak"
    assert (r["randaugment_num_ops"], r["randaugment_magnitude"]) == (2, 9)
    assert (r["lr_schedule"], r["eta_min"], r["max_grad_norm"], r["weight_decay"]) == ("cosine", 1e-5, 1.0, 0.05)
    if r["optimizer"] == "muon":
        assert (r["learning_rate"], r["aux_learning_rate"]) == (1e-2, 1e-3)
        assert (r["aux_adam_beta1"], r["aux_adam_beta2"], r["aux_weight_decay"]) == (0.9, 0.95, 0.05)
    else:
        assert r["learning_rate"] == 1e-3


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("mlp_")])
def test_mlp_settings(name: str) -> None:
    r = load_recipe(name)
    assert r["model_name"] == "mlp" and r["optimizer"] == "sgd"
    assert (r["learning_rate"], r["momentum"], r["weight_decay"]) == (0.1, 0.0, 0.0)
    assert r["lr_schedule"] == "constant" and r["max_grad_norm"] == 1.0 and r["mean_std"] == "cifar100_peak"
    assert r["randaugment_num_ops"] == (2 if r["mix"] else 0)


# ----------------------------------------------------------------------------- the reference page, row by row
#: ../shared/docs/reference-recipes.md, "Optimisation per row" and "Common to all runs", per family:
#: (optimiser -> (lr, weight decay, SGD momentum)), schedule, eta_min, clipping, RandAugment (no mix, mix),
#: mean and std.
FULL = ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
        (0.2673342858792401, 0.2564384629170883, 0.27615047132568404))
PEAK = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
REFERENCE = {
    "resnet18": dict(model="resnet18_cifar", opt={"sgd": (0.1, 5e-4, 0.9)}, schedule="cosine", eta_min=0.0,
                     clip=0.0, randaugment=(0, 0), mean_std=FULL),
    "vit": dict(model="vit_rope", opt={"adamw": (1e-3, 5e-4, None), "muon": (1e-2, 5e-4, None)},
                schedule="cosine", eta_min=0.0, clip=0.0, randaugment=(2, 2), mean_std=FULL),
    "vitpeak": dict(model="vit_peak", opt={"adamw": (1e-3, 0.05, None), "muon": (1e-2, 0.05, None)},
                    schedule="cosine", eta_min=1e-5, clip=1.0, randaugment=(2, 2), mean_std=PEAK),
    "mlp": dict(model="mlp", opt={"sgd": (0.1, 0.0, 0.0)}, schedule="constant", eta_min=0.0, clip=1.0,
                randaugment=(0, 2), mean_std=PEAK),
}  # fmt: skip
#: "Baselines are not plain CE": the row's a, so the task loss is (1 - a) * CE.
BASELINE_A = {
    "mlp_sgd_none": 0.1, "mlp_sgd_mix_none": 0.1, "resnet18_sgd_none": 0.1, "vit_adamw_mix_none": 0.1,
    "vitpeak_adamw_mix_none": 0.1, "vitpeak_muon_mix_none": 0.1,
    "resnet18_sgd_mix_none": 0.01, "vit_muon_none": 0.01, "vit_muon_mix_none": 0.01,
}  # fmt: skip


@pytest.mark.parametrize("name", ALL)
def test_every_recipe_has_the_reference_pages_settings(name: str, tmp_path: Path) -> None:
    """Each recipe, parsed as scripts/train.py parses it, against the page's tabulated settings."""
    from sigreg_hf.experiments.cli_train import parse_args
    from sigreg_hf.experiments.data import resolve_mean_std
    from sigreg_hf.models import create_config

    args, model_args, data_args, optim_args, _ = parse_args(["--recipe", name, "--output_dir", str(tmp_path)])
    family, opt = name.split("_")[:2]
    ref = REFERENCE[family]
    mix = "_mix_" in name
    assert model_args.model_name == ref["model"] and optim_args.optimizer == opt
    lr, wd, momentum = ref["opt"][opt]
    assert (args.learning_rate, args.weight_decay) == (lr, wd)
    if momentum is not None:
        assert (optim_args.momentum, optim_args.nesterov) == (momentum, False)
    assert (optim_args.lr_schedule, optim_args.lr_schedule_interval, optim_args.eta_min) == (
        ref["schedule"], "epoch", ref["eta_min"]
    )
    assert args.max_grad_norm == ref["clip"]
    assert data_args.randaugment_num_ops == ref["randaugment"][mix] and data_args.randaugment_magnitude == 9
    assert resolve_mean_std(data_args.mean_std, data_args.mean, data_args.std) == ref["mean_std"]
    assert (data_args.crop_padding, data_args.hflip, data_args.mix) == (4, True, mix)
    assert args.per_device_train_batch_size == 128 and args.sigreg_sketch_dim == 64
    assert args.num_train_epochs == (1600 if family == "resnet18" and not mix else 400)
    if opt == "muon":
        assert (optim_args.muon_params, optim_args.aux_learning_rate) == ("all_2d", 1e-3)
        assert (optim_args.aux_adam_beta1, optim_args.aux_adam_beta2, optim_args.aux_adam_epsilon) == (0.9, 0.95, 1e-10)
    mode = name.rsplit("_", 1)[1]
    assert args.sigreg_mode == mode and args.sigreg_weighting == "convex"
    if mode == "none":
        assert optim_args.task_loss_scale == pytest.approx(1 - BASELINE_A[name], abs=1e-12)
    else:
        assert args.sigreg_alpha == {"weak": 0.1, "strong": 0.01}[mode] and optim_args.task_loss_scale == 1.0
    overrides = json.loads(model_args.model_overrides or "{}")
    config = create_config(model_args.model_name, **overrides)
    if family == "vit":
        assert (config.rope_variant, config.rope_temperature) == ("reference", 10000.0)
    if family == "vitpeak":
        assert config.init_scheme == "reference"


@pytest.mark.parametrize("name", ["mlp_sgd_mix_none", "mlp_sgd_mix_weak", "mlp_sgd_mix_strong"])
def test_mlp_mix_rows_apply_randaugment_after_crop_and_flip(name: str, synthetic_cifar100: Path) -> None:
    """The three CutMix/MixUp MLP notebooks: RandomCrop(32, 4) -> flip -> RandAugment(2, 9) -> normalise."""
    from torchvision.transforms import v2

    from sigreg_hf.experiments.data import DataArguments, prepare_image_classification_data

    r = load_recipe(name)
    data = prepare_image_classification_data(
        DataArguments(
            dataset_name=str(synthetic_cifar100), crop_padding=r["crop_padding"], hflip=r["hflip"],
            randaugment_num_ops=r["randaugment_num_ops"], randaugment_magnitude=r["randaugment_magnitude"],
            mean_std=r["mean_std"], mix=r["mix"],
        )
    )  # fmt: skip
    batch_transform = data.train.format["format_kwargs"]["transform"]
    steps = batch_transform.transform.transforms  # per image, on uint8
    assert [type(t) for t in steps] == [v2.RandomCrop, v2.RandomHorizontalFlip, v2.RandAugment]
    assert (steps[2].num_ops, steps[2].magnitude) == (2, 9) and steps[0].padding == [4, 4, 4, 4]
    normalize = batch_transform.batch_transform.transforms  # then once per batch
    assert [type(t) for t in normalize] == [v2.ToDtype, v2.Normalize]
    assert tuple(normalize[1].mean) == PEAK[0] and tuple(normalize[1].std) == PEAK[1]


def test_unknown_fields_and_missing_recipes_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="unknown fields \\['learnin_rate'\\]"):
        validate_recipe({"learnin_rate": 0.1}, name="typo")
    with pytest.raises(RecipeError, match="not found.*Available: mlp_sgd_mix_none"):
        load_recipe("resnet50_sgd_none")
    with pytest.raises(RecipeError, match="needs a positive sigreg_alpha"):
        validate_recipe({"sigreg_mode": "weak", "sigreg_alpha": 0.0})
    custom = tmp_path / "mine.yaml"
    custom.write_text("model_name: mlp\nmodel_overrides: {hidden_size: 8}\nsigreg_layers: auto\n")
    loaded = load_recipe(str(custom))
    assert loaded["model_overrides"] == '{"hidden_size": 8}' and loaded["sigreg_layers"] == ["auto"]
