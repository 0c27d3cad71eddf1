#!/usr/bin/env python
"""Put runs side by side with the seed's published numbers: one Markdown table, a CSV, overlay plots.

    python scripts/collect_results.py runs/mlp_sgd_none runs/mlp_sgd_weak runs/mlp_sgd_strong --output_dir runs/mlp

Each RUN_DIR must hold the results.json written by scripts/train.py (or the quickstart). The table shows final and
best-epoch test top-1, best top-5, the seed's published top-1 for the recipe and the difference (best - published);
``--output_dir`` also receives results_table.md / .csv and overlay_accuracy.png / overlay_loss.png
(baseline / weak / strong overlaid).
"""

import sys

from sigreg_hf.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["collect", *sys.argv[1:]]))
