"""Run under ``accelerate launch`` (2 CPU processes, gloo): a recipe's training with :class:`HostSyncRecorder`.

argv: the output folder, then the training command line. Each rank writes ``host_syncs_rank{r}.json`` (the
reads it recorded) into the output folder; tests/experiments/test_fast_path.py checks both are empty.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for host_sync
from host_sync import HostSyncRecorder, RecordSteps  # noqa: E402

from sigreg_hf.experiments import cli_train  # noqa: E402


def main() -> None:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    recorder = HostSyncRecorder()
    cli_train.run(cli_train.parse_args(argv), callbacks=[RecordSteps(recorder)])
    rank = os.environ["RANK"]
    (out / f"host_syncs_rank{rank}.json").write_text(json.dumps(recorder.offenders))


if __name__ == "__main__":
    main()
