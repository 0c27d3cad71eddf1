"""2-process DDP on CPU (gloo) through ``accelerate launch`` equals the 1-process run with the same global batch.

``accelerate launch --multi_gpu --num_processes 2`` is used on purpose: ``--cpu --num_processes 2`` silently runs
one process. The worker sets ``use_cpu=True`` in the training arguments: without it, on a machine with no GPU,
transformers initialises the gloo process group but leaves ``distributed_type`` at NO, so the model is not
wrapped in DDP and the ranks silently train apart (the test would catch that: parameters would differ).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import distributed_trainer_worker as worker
import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_trainer")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = (
        [str(accelerate), "launch"] if accelerate.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    )
    cmd = [
        *launcher,
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(HERE / "distributed_trainer_worker.py"),
        str(out),
        str(worker.GLOBAL_BATCH // 2),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=HERE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    single = worker.run(out / "single", worker.GLOBAL_BATCH)
    return ranks, single


@pytest.mark.parametrize("mode", worker.MODES)
def test_two_process_ddp_matches_one_process(runs, mode):
    ranks, single = runs
    ref = single[mode]
    assert ref["world_size"] == 1
    for rank in ranks:
        got = rank[mode]
        assert got["world_size"] == 2
        for key in ("loss", "task_loss", "sigreg_loss"):
            assert len(got[key]) == worker.STEPS
            assert got[key] == pytest.approx(ref[key], rel=1e-5), key
        for name, value in ref["params"].items():
            torch.testing.assert_close(got["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # the run did move the parameters (the comparison is not trivially true)
    start = worker.FAMILIES["vit"].model()
    moved = max((ref["params"][n] - p.detach()).abs().max().item() for n, p in start.named_parameters())
    assert moved > 1e-3
