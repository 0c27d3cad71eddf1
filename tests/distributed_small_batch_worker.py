"""Run under torchrun (2 processes, gloo): SIGRegulariser on micro-batches of 0, 1 or a few rows per rank.

Writes ``rank{r}.pt`` into the directory given as argv[1]; tests/test_taps_safety.py compares it with the
single-process regulariser on the concatenated rows (or with a skipped batch when the global N is below 2).
"""

import logging
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from sigreg_hf.losses import sigreg_strong, sigreg_weak
from sigreg_hf.taps import SIGRegulariser

# rows on (rank 0, rank 1): the global N decides, every rank alike
SPLITS = ((1, 0), (1, 1), (2, 0), (3, 1), (0, 0), (0, 1))
FEATURES = 6


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 2))


def rows(split: tuple[int, int], index: int) -> torch.Tensor:
    return torch.randn(sum(split), FEATURES, generator=torch.Generator().manual_seed(10 + index))


def run(model: nn.Module, mode: str, x: torch.Tensor, step: int, regulariser: SIGRegulariser) -> dict:
    model.zero_grad()
    with regulariser:
        model(x)
        loss = regulariser.loss(step=step)
    loss.backward()
    return {
        "loss": loss.detach(),
        "requires_grad": loss.requires_grad,
        "grads": [p.grad.detach().clone() for p in model[0].parameters()],  # the tapped layer's
        "counted": bool(regulariser.last_batch_counted),
        "skipped": regulariser.num_skipped_batches,
    }


def main() -> None:
    out_dir = sys.argv[1]
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("sigreg_hf.taps").addHandler(handler)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == 2
    model = make_model()
    # check_finite=True reads the global counts on the host; False (the trainer's) keeps the decision on the device
    regularisers = {
        (mode, check): SIGRegulariser(model, mode=mode, layers=["0"], sketch_dim=8, check_finite=check)
        for mode in ("weak", "strong")
        for check in (True, False)
    }
    results = []
    for index, split in enumerate(SPLITS):
        start = sum(split[:rank])
        local = rows(split, index)[start : start + split[rank]]
        results.append({key: run(model, key[0], local, index, reg) for key, reg in regularisers.items()})
    # the functional losses: one row per rank is a valid global batch of 2; one row in all is refused on every rank
    functional = {}
    for split in ((1, 1), (1, 0)):
        local = torch.randn(sum(split), FEATURES, generator=torch.Generator().manual_seed(3))[rank : rank + split[rank]]
        for name, loss in (("weak", sigreg_weak), ("strong", sigreg_strong)):
            try:
                functional[(split, name)] = loss(local, generator=torch.Generator().manual_seed(4)).detach()
            except ValueError as exc:
                functional[(split, name)] = str(exc)
    torch.save(
        {"regulariser": results, "functional": functional, "warnings": [w for w in warnings if "too small" in w]},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    from sigreg_test_models import finish_worker  # this script's folder is on sys.path

    main()
    finish_worker()
