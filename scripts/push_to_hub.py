#!/usr/bin/env python
"""Upload a run directory to the Hugging Face Hub.

    python scripts/push_to_hub.py RUN_DIR --repo_id ORG/NAME [--private] [--overwrite_readme]

(the same as ``sigreg-hf push``). Uploads, in one ``HfApi.upload_folder`` commit with an explicit allow-list: the
weights (safetensors, or a PEFT adapter), config.json, the image processor / tokenizer / generation configs, the
model's own remote-code files (named by config.json's auto_map, no other code), the model card (README.md: yours is
kept unless --overwrite_readme; a generated one is rebuilt for ORG/NAME, with model-index), the plots, results.json,
log_history.csv and the recipe. Log in first (`hf auth login`) or set HF_TOKEN. Nothing is written into RUN_DIR;
if the upload fails the command to retry is printed.
"""

import sys

from sigreg_hf.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["push", *sys.argv[1:]]))
