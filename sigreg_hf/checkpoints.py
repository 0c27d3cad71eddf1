"""Output-directory protection and ``--resume_from_checkpoint latest``: a rerun never deletes a run's checkpoints.

A crashed command run again would start at step 0 in the same folder, and ``save_total_limit`` rotation
would then delete the crashed run's ``checkpoint-*`` folders. :func:`resolve_resume` stops that: a folder that
holds checkpoints is resumed (``latest`` / ``True`` / a path) or overwritten on explicit request, never reused
silently.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import sort_checkpoints

__all__ = ["OutputDirectoryInUseError", "existing_checkpoints", "latest_complete_checkpoint", "resolve_resume"]

logger = logging.getLogger(__name__)

LATEST = ("latest", "last", "true", "True", True)


class OutputDirectoryInUseError(RuntimeError):
    """The output directory holds checkpoints and the run neither resumes nor overwrites them."""


def existing_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders directly inside ``output_dir``, by step (the Trainer's own ordering)."""
    if not Path(output_dir).is_dir():
        return []
    return [Path(path) for path in sort_checkpoints(str(output_dir))]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-*`` whose ``trainer_state.json`` exists and parses: the Trainer writes it last, so a
    folder without it was cut off mid-save (e.g. kill -9)."""
    for checkpoint in reversed(existing_checkpoints(output_dir)):
        try:
            TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))
        except (OSError, ValueError) as err:
            logger.warning("Skipping %s: incomplete checkpoint (%s), probably cut off while saving.", checkpoint, err)
            continue
        return checkpoint
    return None


def resolve_resume(
    output_dir: str | Path, resume_from_checkpoint: str | bool | None, *, overwrite_output_dir: bool = False
) -> str | None:
    """The checkpoint to resume from (None: start fresh), or an error when starting fresh would lose work.

    Args:
        output_dir: the run's output directory.
        resume_from_checkpoint: None/False (start fresh), ``"latest"`` (also ``"last"``, ``True``: the newest
            complete ``checkpoint-*`` in ``output_dir``, or a fresh start when there is none), or a checkpoint
            path.
        overwrite_output_dir: start fresh even though ``output_dir`` holds checkpoints; they are deleted first
            (the user asked for it), so that rotation cannot mix old and new ones.

    Raises:
        OutputDirectoryInUseError: ``output_dir`` holds checkpoints and neither resume nor overwrite was asked.
        FileNotFoundError: an explicit checkpoint path does not exist.
    """
    if resume_from_checkpoint in LATEST:
        last = latest_complete_checkpoint(output_dir)
        if last is None:
            if existing_checkpoints(output_dir):
                raise OutputDirectoryInUseError(
                    f"{output_dir} holds checkpoint folders but none is complete (no readable trainer_state.json): "
                    "nothing to resume. Start over with --overwrite_output_dir true."
                )
            logger.warning("resume_from_checkpoint=latest: no checkpoint in %s yet, starting from step 0.", output_dir)
            return None
        logger.warning("Resuming from %s.", last)
        return str(last)
    if resume_from_checkpoint not in (None, False, "", "false", "False", "none", "None"):
        path = Path(str(resume_from_checkpoint))
        if not path.is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint: {path} is not a checkpoint folder.")
        return str(path)
    checkpoints = existing_checkpoints(output_dir)
    if checkpoints and not overwrite_output_dir:
        names = ", ".join(p.name for p in checkpoints[-3:])
        raise OutputDirectoryInUseError(
            f"{output_dir} already holds {len(checkpoints)} checkpoint(s) ({names}) from an earlier run; starting "
            "again would overwrite them and checkpoint rotation would delete them. Either resume it with "
            "--resume_from_checkpoint latest, or start over with --overwrite_output_dir true (deletes them), "
            "or choose another --output_dir."
        )
    for checkpoint in checkpoints:
        logger.warning("overwrite_output_dir: deleting %s", checkpoint)
        shutil.rmtree(checkpoint)
    return None
