#!/usr/bin/env python
"""Train one configuration: ``python scripts/train.py --recipe NAME [--any_field VALUE ...]``.

Examples::

    python scripts/train.py --list_recipes
    python scripts/train.py --recipe mlp_sgd_weak --dataset_name /data/cifar10 --mean_std cifar10
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml scripts/train.py --recipe vit_muon_mix_weak
    torchrun --nproc_per_node 8 scripts/train.py --recipe resnet18_sgd_mix_weak

Recipe values are defaults; command-line arguments override them. See ``--help`` for every field.
"""

from sigreg_hf.experiments.cli_train import cli

if __name__ == "__main__":
    cli()
