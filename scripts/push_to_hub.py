#!/usr/bin/env python
"""Upload a run directory to the Hugging Face Hub.

    python scripts/push_to_hub.py RUN_DIR --repo_id ORG/NAME [--private]

Uploads, in one commit: the weights (safetensors), config.json, the image-processing config
(preprocessor_config.json), the modelling code (for trust_remote_code), a model card (README.md, regenerated for
ORG/NAME, with model-index), the plots, results.json, log_history.csv and the recipe. Log in first
(`hf auth login`) or set HF_TOKEN. If the upload fails nothing local is touched, and the command to retry is printed.
"""

import sys

from sigreg_hf.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["push", *sys.argv[1:]]))
