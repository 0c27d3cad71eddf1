"""Run under torchrun (2 processes, gloo): the losses as global-batch statistics.

Writes ``rank{r}.pt`` into the directory given as argv[1]; tests/test_losses_distributed.py
compares it with the single-process computation on the concatenated batch.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sigreg_hf import sigreg_strong, sigreg_weak

# uneven local batches for the value test: the global N must be used
UNEVEN_SPLIT = (5, 9)
DDP_ROWS_PER_RANK = 6


def full_batch() -> torch.Tensor:
    return torch.randn(sum(UNEVEN_SPLIT), 80, generator=torch.Generator().manual_seed(0)) * 1.5 + 0.3


def sample_mask() -> torch.Tensor:
    """Which rows of :func:`full_batch` are samples (e.g. real tokens): rank 1 keeps one row only."""
    mask = torch.rand(sum(UNEVEN_SPLIT), generator=torch.Generator().manual_seed(7)) > 0.4
    mask[UNEVEN_SPLIT[0] :] = False
    mask[UNEVEN_SPLIT[0] + 2] = True
    return mask


def ddp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2 * DDP_ROWS_PER_RANK, 10, generator=g), torch.randn(2 * DDP_ROWS_PER_RANK, 3, generator=g)


class Net(torch.nn.Module):
    """A two-layer net whose hidden layer is regularised."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.hidden = torch.nn.Sequential(torch.nn.Linear(10, 96), torch.nn.Tanh())
        self.head = torch.nn.Linear(96, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(x)
        return hidden, self.head(hidden)


def regularised_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
    """Task loss + weak + strong SIGReg, with per-step generators seeded identically on every rank."""
    hidden, out = model(x)
    task = torch.nn.functional.mse_loss(out, y)
    g1, g2 = torch.Generator().manual_seed(100 + step), torch.Generator().manual_seed(200 + step)
    return task + 0.1 * sigreg_weak(hidden, generator=g1) + 0.01 * sigreg_strong(hidden, generator=g2)


def main() -> None:
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    start = sum(UNEVEN_SPLIT[:rank])
    local = full_batch()[start : start + UNEVEN_SPLIT[rank]].clone().requires_grad_(True)
    strong = sigreg_strong(local, generator=torch.Generator().manual_seed(5))
    weak = sigreg_weak(local, generator=torch.Generator().manual_seed(6))
    (strong_grad,) = torch.autograd.grad(strong, local)
    (weak_grad,) = torch.autograd.grad(weak, local)
    local_only = sigreg_weak(local.detach(), generator=torch.Generator().manual_seed(6), distributed=False)
    keep = sample_mask()[start : start + UNEVEN_SPLIT[rank]]
    masked = {
        name: loss(local, generator=torch.Generator().manual_seed(8), sample_mask=keep)
        for name, loss in (("weak", sigreg_weak), ("strong", sigreg_strong))
    }
    masked_grads = {name: torch.autograd.grad(value, local)[0] for name, value in masked.items()}

    x, y = ddp_batch()
    rows = slice(rank * DDP_ROWS_PER_RANK, (rank + 1) * DDP_ROWS_PER_RANK)
    model = DistributedDataParallel(Net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grads, losses = [], []
    for step in range(3):
        optimizer.zero_grad()
        loss = regularised_loss(model, x[rows], y[rows], step)
        loss.backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        losses.append(loss.item())
        optimizer.step()
    torch.save(
        {
            "strong": strong.detach(),
            "weak": weak.detach(),
            "strong_grad": strong_grad,
            "weak_grad": weak_grad,
            "local_only_weak": local_only,
            "masked": {name: value.detach() for name, value in masked.items()},
            "masked_grads": masked_grads,
            "start": start,
            "ddp_losses": losses,
            "ddp_grads": grads,
            "ddp_params": [p.detach().clone() for p in model.parameters()],
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    from sigreg_test_models import finish_worker  # this script's folder is on sys.path

    main()
    finish_worker()
