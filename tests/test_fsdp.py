"""FSDP2 on CPU (torchrun, 2 gloo processes): SIGRegulariser on sharded HF models equals one process.

accelerate only enables FSDP for accelerator backends, so this drives ``torch.distributed.fsdp.fully_shard``
directly, the way a custom training loop would: hooks on sharded transformer blocks, global-batch statistics,
FSDP's gradient averaging. Losses and the parameters after 3 SGD steps must match one process on whole batches
(the ranks run the trainer's check_finite=False path: padded tokens kept with a sample mask, decisions on the
device; the one process the strict path that selects the real tokens).
"""

from __future__ import annotations

import fsdp_worker as worker
import pytest
import torch
from sigreg_test_models import torchrun_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CASES = [f"{family}-{mode}" for family, mode in worker.CASES]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return torchrun_ranks("fsdp_worker.py", tmp_path_factory.mktemp("fsdp"))


@pytest.fixture(scope="module")
def single() -> dict[str, dict]:
    return {f"{family}-{mode}": worker.train(family, mode) for family, mode in worker.CASES}


@pytest.mark.parametrize("case", CASES)
def test_parameters_really_are_sharded(ranks, single, case):
    full_numel = sum(p.numel() for p in single[case]["params"].values())
    for r in ranks:
        assert r[case]["param_class"] == "DTensor"
        assert r[case]["local_numel"] < 0.6 * full_numel
    assert sum(r[case]["local_numel"] for r in ranks) >= full_numel


@pytest.mark.parametrize("case", CASES)
def test_sharded_training_equals_one_process(ranks, single, case):
    one = single[case]
    for step, want in enumerate(one["logged"]):
        # the statistic is of the global batch on every rank; the task losses average to the global mean
        for r in ranks:
            assert r[case]["logged"][step]["sigreg"] == pytest.approx(want["sigreg"], rel=1e-5)
        mean_task = sum(r[case]["logged"][step]["task"] for r in ranks) / len(ranks)
        assert mean_task == pytest.approx(want["task"], rel=1e-5)
    for r in ranks:
        for name, want in one["params"].items():
            torch.testing.assert_close(r[case]["params"][name], want, rtol=1e-4, atol=1e-6, msg=name)
    # and training moved the parameters, so equality is not trivial
    start = worker.FAMILIES[case.split("-")[0]].model(seed=3)
    moved = max((p.detach() - one["params"][n]).abs().max().item() for n, p in start.named_parameters())
    assert moved > 1e-3
