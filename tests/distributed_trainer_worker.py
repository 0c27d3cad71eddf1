"""Worker for test_trainer_distributed.py: a few SIGRegTrainer steps, results saved per rank.

Run as ``accelerate launch --multi_gpu --num_processes 2 distributed_trainer_worker.py OUT 8`` (2 gloo
processes on CPU, 8 rows each) or in one process with 16 rows; both see the same global batches.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from sigreg_test_models import FAMILIES, losses, training_args  # noqa: E402

from sigreg_hf.trainer import SIGRegTrainer  # noqa: E402

GLOBAL_BATCH = 16
STEPS = 3
MODES = ("weak", "strong")


def run(out: Path, per_device_batch: int, **extra: Any) -> dict[str, Any]:
    """Train a small ViT for each mode; return logged losses and final parameters per mode."""
    results: dict[str, Any] = {}
    for mode in MODES:
        fam = FAMILIES["vit"]
        args = training_args(
            out / mode,
            per_device_train_batch_size=per_device_batch,
            max_steps=STEPS,
            optim="sgd",
            learning_rate=0.5,
            sigreg_mode=mode,
            sigreg_alpha=0.5,
            sigreg_log_per_layer=True,
            **extra,
        )
        trainer = SIGRegTrainer(model=fam.model(), args=args, train_dataset=fam.data(GLOBAL_BATCH * STEPS))
        trainer.train()
        history = trainer.state.log_history
        results[mode] = {
            "world_size": trainer.args.world_size,
            "loss": losses(history),
            "task_loss": losses(history, "task_loss"),
            "sigreg_loss": losses(history, "sigreg_loss"),
            "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
        }
    return results


if __name__ == "__main__":
    out_dir, batch = Path(sys.argv[1]), int(sys.argv[2])
    result = run(out_dir, batch, ddp_backend="gloo")
    rank = int(__import__("os").environ.get("RANK", "0"))
    torch.save(result, out_dir / f"rank{rank}.pt")
