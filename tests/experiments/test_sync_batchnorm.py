"""CrossRankBatchNorm: 2-process gloo runs on CPU give the single-process full-batch BatchNorm exactly.

The multi-process checks spawn two ranks once per scenario group (module fixtures); each rank writes its
results to ``rank{r}.pt`` and the tests compare them with one process on the concatenated batch.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from sigreg_hf.experiments.sync_batchnorm import (
    CrossRankBatchNorm,
    convert_sync_batchnorm,
    should_sync_batchnorm,
)

WORLD = 2
GLOBAL_ROWS = 8
#: rows per rank of the small-net batch of 8: even, uneven, a rank with one row, a rank with none
SPLITS = ((4, 4), (5, 3), (7, 1), (8, 0))
TOL = {"rtol": 1e-5, "atol": 1e-5}


# ----------------------------------------------------------------------------------------------
# spawning two gloo ranks
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out_dir: str, scenario: Callable[[int], dict]) -> None:
    """One spawned rank: join the gloo group, run ``scenario(rank)``, save its result."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    torch.save(scenario(rank), Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # exit without interpreter teardown (gloo teardown occasionally aborts; see tests/sigreg_test_models.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_two_ranks(scenario: Callable[[int], dict], out: Path) -> list[dict]:
    """Run ``scenario`` on two spawned gloo ranks; their results, by rank."""
    mp.start_processes(_rank_main, args=(_free_port(), str(out), scenario), nprocs=WORLD, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _rows(split: tuple[int, ...], rank: int) -> slice:
    start = sum(split[:rank])
    return slice(start, start + split[rank])


# ----------------------------------------------------------------------------------------------
# the small conv net, trained the same way on a rank and on one process
# ----------------------------------------------------------------------------------------------
def small_net() -> nn.Sequential:
    """conv -> BN2d -> relu -> pool -> BN1d (cumulative average, momentum=None) -> linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(6, momentum=None),
        nn.Linear(6, 3),
    )


def small_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(GLOBAL_ROWS, 3, 6, 6, generator=g) * 2 + 0.5, torch.randn(GLOBAL_ROWS, 3, generator=g))
        for _ in range(2)
    ]


def train_small(model: nn.Module, rows: slice, world: int) -> dict[str, Any]:
    """Two SGD steps on ``rows`` of each batch, recording outputs, gradients and the final state.

    The rank's loss is ``world * sum(local squared errors) / GLOBAL_ROWS``, so that DDP-style averaging of the
    parameter gradients over ranks gives the gradient of the global mean loss; the input gradient is divided
    by ``world`` to be comparable with the single-process one.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    record: dict[str, Any] = {"out": [], "input_grad": [], "param_grad": []}
    for x, y in small_batches():
        optimizer.zero_grad()
        local = x[rows].clone().requires_grad_(True)
        out = model(local)
        loss = world * ((out - y[rows]) ** 2).sum() / GLOBAL_ROWS
        loss.backward()
        if world > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        record["out"].append(out.detach())
        record["input_grad"].append(local.grad / world)
        record["param_grad"].append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
    record["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        record["eval_out"] = model(small_batches()[0][0][rows])
    return record


def small_net_scenario(rank: int) -> dict[str, Any]:
    """Every small-net split, bf16 inputs, process groups and the global-count-1 error, on one rank."""
    result: dict[str, Any] = {}
    for split in SPLITS:
        result[split] = train_small(convert_sync_batchnorm(small_net()), _rows(split, rank), WORLD)

    x16 = (torch.randn(GLOBAL_ROWS, 6, 5, 5, generator=torch.Generator().manual_seed(2)) * 3 + 1).bfloat16()
    bn16 = CrossRankBatchNorm(6)
    result["bf16"] = {"out": bn16(x16[_rows((4, 4), rank)]).detach(), "state": bn16.state_dict()}

    # a large offset (mean 1000, std 1): float32 sums of squares around zero would lose the variance
    far = torch.randn(GLOBAL_ROWS, 6, 4, generator=torch.Generator().manual_seed(5)) + 1000
    result["offset"] = CrossRankBatchNorm(6)(far[_rows((5, 3), rank)]).detach()

    # every rank creates every group, in the same order
    solo = [dist.new_group([0]), dist.new_group([1])][rank]
    pair = dist.new_group([0, 1])
    x = torch.randn(GLOBAL_ROWS, 6, generator=torch.Generator().manual_seed(3))
    local = x[_rows((4, 4), rank)]
    converted = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(6)), process_group=pair)
    result["groups"] = {
        "solo": CrossRankBatchNorm(6, process_group=solo)(local).detach(),
        "pair": converted(local).detach(),
        "pair_is_set": converted[0].process_group is pair,
    }

    # one row on rank 0, none on rank 1: a global count of 1 per channel, on both ranks
    try:
        CrossRankBatchNorm(6)(x[: 1 - rank])
        result["count_one_error"] = None
    except ValueError as error:
        result["count_one_error"] = str(error)
    return result


@pytest.fixture(scope="module")
def small_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_two_ranks(small_net_scenario, tmp_path_factory.mktemp("sync_bn_small"))


@pytest.fixture(scope="module")
def small_reference() -> dict[str, Any]:
    torch.set_num_threads(1)
    return train_small(small_net(), slice(0, GLOBAL_ROWS), world=1)


# ----------------------------------------------------------------------------------------------
# the project's ResNet18 under DDP
# ----------------------------------------------------------------------------------------------
def resnet() -> nn.Module:
    from sigreg_hf.models import create_model

    torch.manual_seed(0)
    return create_model("resnet18_cifar", num_classes=10)


def resnet_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(GLOBAL_ROWS, 3, 16, 16, generator=g), torch.randint(0, 10, (GLOBAL_ROWS,), generator=g)


def resnet_step(model: nn.Module, rows: slice) -> nn.Module:
    """One SGD step (lr 0.1) on the mean cross-entropy of ``rows``; the model after it."""
    x, y = resnet_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(pixel_values=x[rows]).logits, y[rows]).backward()
    optimizer.step()
    return model


def resnet_scenario(rank: int) -> dict[str, Any]:
    """ResNet18 in DDP (broadcast_buffers=True, the default), 4 + 4 rows, converted and not; rank 0's states."""
    rows = _rows((4, 4), rank)
    result: dict[str, Any] = {}
    for name, convert in (("synced", True), ("plain", False)):
        model = convert_sync_batchnorm(resnet()) if convert else resnet()
        ddp = nn.parallel.DistributedDataParallel(model)
        resnet_step(ddp, rows)
        if rank == 0:
            result[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result


@pytest.fixture(scope="module")
def resnet_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_two_ranks(resnet_scenario, tmp_path_factory.mktemp("sync_bn_resnet"))


@pytest.fixture(scope="module")
def resnet_reference() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    return resnet_step(resnet(), slice(0, GLOBAL_ROWS)).state_dict()


# ----------------------------------------------------------------------------------------------
# multi-process tests
# ----------------------------------------------------------------------------------------------
@pytest.mark.distributed
@pytest.mark.parametrize("split", SPLITS, ids=["4+4", "5+3", "7+1", "8+0"])
def test_two_ranks_match_one_process_on_the_full_batch(small_ranks, small_reference, split):
    ref = small_reference
    for rank, result in enumerate(small_ranks):
        got, rows = result[split], _rows(split, rank)
        for step in range(2):
            torch.testing.assert_close(got["out"][step], ref["out"][step][rows], **TOL)
            torch.testing.assert_close(got["input_grad"][step], ref["input_grad"][step][rows], **TOL)
            for g, want in zip(got["param_grad"][step], ref["param_grad"][step], strict=True):
                torch.testing.assert_close(g, want, **TOL)
        # parameters, running_mean / running_var (BN2d momentum 0.1, BN1d cumulative) and num_batches_tracked
        assert got["state"].keys() == ref["state"].keys()
        for key, want in ref["state"].items():
            torch.testing.assert_close(got["state"][key], want, **TOL, msg=key)
        assert int(got["state"]["1.num_batches_tracked"]) == 2
        # eval mode uses the (identical) running statistics, no communication
        torch.testing.assert_close(got["eval_out"], ref["eval_out"][rows], **TOL)


@pytest.mark.distributed
def test_bf16_inputs_use_float32_statistics(small_ranks):
    x16 = (torch.randn(GLOBAL_ROWS, 6, 5, 5, generator=torch.Generator().manual_seed(2)) * 3 + 1).bfloat16()
    bn = nn.BatchNorm2d(6)
    want = bn(x16.float())
    for rank, result in enumerate(small_ranks):
        got = result["bf16"]
        assert got["out"].dtype == torch.bfloat16
        torch.testing.assert_close(got["out"].float(), want[_rows((4, 4), rank)], rtol=1e-2, atol=2e-2)
        for key, value in bn.state_dict().items():
            torch.testing.assert_close(got["state"][key], value, **TOL)


@pytest.mark.distributed
def test_statistics_survive_a_large_offset(small_ranks):
    far = torch.randn(GLOBAL_ROWS, 6, 4, generator=torch.Generator().manual_seed(5)) + 1000
    want = nn.BatchNorm1d(6).double()(far.double()).float()
    for rank, result in enumerate(small_ranks):
        torch.testing.assert_close(result["offset"], want[_rows((5, 3), rank)], rtol=0, atol=2e-3)


@pytest.mark.distributed
def test_process_group_is_honoured(small_ranks):
    x = torch.randn(GLOBAL_ROWS, 6, generator=torch.Generator().manual_seed(3))
    full = nn.BatchNorm1d(6)(x).detach()
    for rank, result in enumerate(small_ranks):
        rows = _rows((4, 4), rank)
        assert result["groups"]["pair_is_set"]
        torch.testing.assert_close(result["groups"]["pair"], full[rows], **TOL)
        # a one-rank group: ordinary batch norm on the local rows
        torch.testing.assert_close(result["groups"]["solo"], nn.BatchNorm1d(6)(x[rows]).detach(), **TOL)
        assert (result["groups"]["solo"] - full[rows]).abs().max() > 1e-2


@pytest.mark.distributed
def test_a_global_count_of_one_raises_on_every_rank(small_ranks):
    for result in small_ranks:
        assert "Expected more than 1 value per channel when training" in result["count_one_error"]


@pytest.mark.distributed
def test_ddp_resnet18_with_converted_batchnorm_matches_one_process(resnet_ranks, resnet_reference):
    got = resnet_ranks[0]["synced"]
    assert got.keys() == resnet_reference.keys()
    for key, want in resnet_reference.items():
        torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.distributed
def test_ddp_resnet18_without_conversion_differs(resnet_ranks, resnet_reference):
    got = resnet_ranks[0]["plain"]
    # rank 0's BN statistics come from its 4 rows only (and DDP broadcasts them to rank 1)
    assert (got["bn1.running_mean"] - resnet_reference["bn1.running_mean"]).abs().max() > 1e-3
    assert (got["bn1.running_var"] - resnet_reference["bn1.running_var"]).abs().max() > 1e-3
    assert (got["conv1.weight"] - resnet_reference["conv1.weight"]).abs().max() > 1e-5


# ----------------------------------------------------------------------------------------------
# single process
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_a_process_group_it_is_batchnorm(single_thread, momentum):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(4, momentum=momentum)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    cross = CrossRankBatchNorm(4, momentum=momentum)
    cross.load_state_dict(plain.state_dict())
    for _ in range(2):
        x = (torch.randn(6, 4, 3, 3) * 2 + 1).requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        out, out2 = plain(x), cross(x2)
        torch.testing.assert_close(out2, out, rtol=0, atol=0)
        out.square().sum().backward()
        out2.square().sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=0, atol=0)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(cross.state_dict()[key], value, rtol=0, atol=0)
    plain.eval()
    cross.eval()
    x = torch.randn(3, 4, 3, 3)
    torch.testing.assert_close(cross(x), plain(x), rtol=0, atol=0)


def test_convert_keeps_state_dict_parameters_and_other_modules():
    model = small_net()
    model[1].weight.requires_grad_(False)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], CrossRankBatchNorm) and isinstance(converted[5], CrossRankBatchNorm)
    assert converted[1].momentum == 0.1 and converted[5].momentum is None
    assert not converted[1].training and not converted[1].weight.requires_grad
    assert converted[0] is model[0] and converted[6] is model[6]
    # the same parameter objects (optimizer references carry over), the same keys and values both ways
    assert all(p is params[n] for n, p in converted.named_parameters())
    assert converted.state_dict().keys() == before.keys()
    plain = small_net()
    plain.load_state_dict(converted.state_dict())
    convert_sync_batchnorm(small_net()).load_state_dict(plain.state_dict())
    for key, value in before.items():
        torch.testing.assert_close(plain.state_dict()[key], value, rtol=0, atol=0)
    # a lone BatchNorm layer becomes a new layer; a model without BatchNorm comes back as it is
    assert isinstance(convert_sync_batchnorm(nn.BatchNorm1d(3)), CrossRankBatchNorm)
    linear = nn.Sequential(nn.Linear(2, 2))
    assert convert_sync_batchnorm(linear) is linear and isinstance(linear[0], nn.Linear)
    # a torch SyncBatchNorm converts too; a CrossRankBatchNorm stays as it is
    assert isinstance(convert_sync_batchnorm(nn.SyncBatchNorm(3)), CrossRankBatchNorm)
    already = CrossRankBatchNorm(3)
    assert convert_sync_batchnorm(already) is already


def test_should_sync_batchnorm():
    with_bn, without_bn = small_net(), nn.Sequential(nn.Linear(2, 2))
    assert should_sync_batchnorm(with_bn, 2, "auto")
    assert not should_sync_batchnorm(with_bn, 1, "auto")
    assert not should_sync_batchnorm(without_bn, 8, "auto")
    assert should_sync_batchnorm(without_bn, 1, "true")
    assert not should_sync_batchnorm(with_bn, 8, "false")
    with pytest.raises(ValueError, match="'auto', 'true' or 'false'"):
        should_sync_batchnorm(with_bn, 2, "yes")


def test_one_value_per_channel_raises_like_batchnorm():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        CrossRankBatchNorm(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nn.BatchNorm1d(3)(torch.randn(1, 3))
