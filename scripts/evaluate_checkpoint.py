#!/usr/bin/env python
"""Evaluate a checkpoint from the Hub (or a folder) on a test split: top-1 and top-5 accuracy.

    python scripts/evaluate_checkpoint.py --model ORG/NAME [--dataset_name uoft-cs/cifar100] [--output_json m.json]
    HF_HUB_OFFLINE=1 python scripts/evaluate_checkpoint.py --model ORG/NAME ...   # from the local cache only

The model loads with AutoModelForImageClassification.from_pretrained (sigreg_hf.models registers the sigreg-*
types); the inputs are preprocessed with the checkpoint's own image-processing config. ``--dataset_name`` defaults
to the dataset recorded in the checkpoint's results.json; ``--output_json`` writes {"top1": ..., "top5": ...}
(percent) plus the model, dataset, split and number of images.
"""

import sys

from sigreg_hf.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
