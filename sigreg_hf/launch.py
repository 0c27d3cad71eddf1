"""Launch checks: refuse process layouts in which a run would train wrong without a word.

Two layouts do that with a plain ``transformers.Trainer``:

* **Processes that do not form one job.** ``accelerate launch`` / ``torchrun`` start N processes
  (``WORLD_SIZE=N``), but on a machine without a GPU the training arguments see a world of one unless
  ``use_cpu=True``: N independent trainings then write the same ``output_dir``.
* **One process, several GPUs.** The Trainer wraps the model in ``nn.DataParallel``: the batch is
  multiplied by the number of GPUs, and forward hooks run on per-GPU replicas, so each tapped layer would
  be regularised on one replica's share of the batch.
"""

from __future__ import annotations

import os

import torch
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

__all__ = ["LaunchError", "check_launch", "launched_world_size"]


class LaunchError(RuntimeError):
    """The processes or devices of this run would not train as one job."""


def launched_world_size() -> int:
    """How many processes the launcher started: the process group's size, else ``WORLD_SIZE`` (1 if unset)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_launch(args: TrainingArguments, *, hooks_on_model: bool) -> None:
    """Raise :class:`LaunchError` when the launch would train wrong silently.

    Args:
        args: the run's training arguments.
        hooks_on_model: whether forward hooks capture hidden states (SIGReg on): ``nn.DataParallel``
            replicas would bypass them.
    """
    launched = launched_world_size()
    if launched > 1 and args.world_size == 1:
        hint = (
            "This machine has no GPU: pass use_cpu=True (--use_cpu true) so that the processes form one DDP "
            "job over gloo."
            if not torch.cuda.is_available()
            else "Check that every process sees its GPU (CUDA_VISIBLE_DEVICES) and the accelerate config."
        )
        raise LaunchError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but the training arguments see a "
            f"world of 1: each process would train alone and write the same output_dir ({args.output_dir}). "
            + hint
        )
    if hooks_on_model and args.n_gpu > 1 and args.parallel_mode == ParallelMode.NOT_DISTRIBUTED:
        raise LaunchError(
            f"One process sees {args.n_gpu} GPUs, so the Trainer would wrap the model in nn.DataParallel: SIGReg's "
            "hooks would see one replica's share of the batch per layer. Launch one process per GPU with "
            f"`accelerate launch --num_processes {args.n_gpu} ...` or `torchrun --nproc_per_node {args.n_gpu} ...`, "
            "or train on one GPU with CUDA_VISIBLE_DEVICES=0."
        )
