"""A real 2-process gloo run (torchrun): the losses are global-batch statistics under DDP."""

from __future__ import annotations

import distributed_losses_worker as worker
import pytest
import torch
from sigreg_test_models import torchrun_ranks

from sigreg_hf import sigreg_strong, sigreg_weak

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return torchrun_ranks("distributed_losses_worker.py", tmp_path_factory.mktemp("dist"))


def test_every_rank_returns_the_global_batch_loss(ranks):
    full = worker.full_batch().requires_grad_(True)
    strong = sigreg_strong(full, generator=torch.Generator().manual_seed(5))
    weak = sigreg_weak(full, generator=torch.Generator().manual_seed(6))
    for r in ranks:
        torch.testing.assert_close(r["strong"], strong.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(r["weak"], weak.detach(), rtol=1e-5, atol=0)
    # the local-only statistic really is different (the test would notice a per-rank statistic)
    assert abs(ranks[0]["local_only_weak"].item() - weak.item()) > 1e-2


def test_local_rows_get_world_size_times_their_global_gradient(ranks):
    full = worker.full_batch().requires_grad_(True)
    (strong_grad,) = torch.autograd.grad(sigreg_strong(full, generator=torch.Generator().manual_seed(5)), full)
    (weak_grad,) = torch.autograd.grad(sigreg_weak(full, generator=torch.Generator().manual_seed(6)), full)
    for r, n in zip(ranks, worker.UNEVEN_SPLIT, strict=True):
        rows = slice(r["start"], r["start"] + n)
        torch.testing.assert_close(r["strong_grad"] / 2, strong_grad[rows], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(r["weak_grad"] / 2, weak_grad[rows], rtol=1e-4, atol=1e-7)


def test_sample_masks_select_the_global_samples(ranks):
    """Each rank's sample_mask over its rows: the statistic of the rows kept on all ranks, gradients included."""
    full = worker.full_batch().requires_grad_(True)
    keep = worker.sample_mask()
    for name, loss in (("weak", sigreg_weak), ("strong", sigreg_strong)):
        want = loss(full[keep], generator=torch.Generator().manual_seed(8))
        (want_grad,) = torch.autograd.grad(want, full)
        for r, n in zip(ranks, worker.UNEVEN_SPLIT, strict=True):
            torch.testing.assert_close(r["masked"][name], want.detach(), rtol=1e-5, atol=0)
            rows = slice(r["start"], r["start"] + n)
            torch.testing.assert_close(r["masked_grads"][name] / 2, want_grad[rows], rtol=1e-4, atol=1e-7)
            assert not r["masked_grads"][name][~keep[rows]].any()  # rows left out get no gradient


def test_ddp_averaged_gradients_equal_single_process_gradients(ranks):
    x, y = worker.ddp_batch()
    model = worker.Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        optimizer.zero_grad()
        loss = worker.regularised_loss(model, x, y, step)
        loss.backward()
        for r in ranks:
            # each rank logs its local task loss + the (global) regularizers; their mean is the global loss
            for got, want in zip(r["ddp_grads"][step], [p.grad for p in model.parameters()], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        mean_logged = sum(r["ddp_losses"][step] for r in ranks) / len(ranks)
        assert abs(mean_logged - loss.item()) < 1e-5 * abs(loss.item())
        optimizer.step()
    for r in ranks:
        for got, want in zip(r["ddp_params"], model.parameters(), strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6)
