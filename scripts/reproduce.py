#!/usr/bin/env python
"""Run the seed's table rows (all 27 recipes by default) one after another and collect the results.

Examples::

    python scripts/reproduce.py --dry_run                       # print the 27 commands
    python scripts/reproduce.py --recipes 'mlp_*' -- --num_train_epochs 40
    python scripts/reproduce.py --launcher accelerate --accelerate_config accelerate_configs/multi_gpu.yaml \
        --recipes 'vit_muon_*' -- --per_device_train_batch_size 16

Arguments after ``--`` are passed to every ``scripts/train.py`` run. Results: ``<output_root>/<recipe>/``
per run and ``<output_root>/results_table.md`` side by side with the published numbers.
"""

import sys

from sigreg_hf.experiments.cli_reproduce import main

if __name__ == "__main__":
    sys.exit(main())
