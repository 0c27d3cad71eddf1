"""Issue 11, items 9 and 10: launches that would train wrong silently are refused, in the trainer itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from sigreg_hf import SIGRegConfig, SIGRegTrainer
from sigreg_hf.launch import LaunchError, check_launch, launched_world_size


def _args(tmp_path: Path, **kwargs) -> SIGRegConfig:
    return SIGRegConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x, labels=None):
        logits = self.body(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_processes_that_do_not_form_one_job_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = _args(tmp_path)
    assert launched_world_size() == 2 and args.world_size == 1
    with pytest.raises(LaunchError, match=r"2 processes were launched .* see a world of 1.*use_cpu=True"):
        check_launch(args, hooks_on_model=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(args, hooks_on_model=True)


def test_data_parallel_is_refused_when_hooks_capture(tmp_path):
    args = _args(tmp_path)
    args._n_gpu = 2  # what TrainingArguments computes on a 2-GPU machine without a launcher
    with pytest.raises(LaunchError, match=r"nn\.DataParallel.*accelerate launch --num_processes 2.*torchrun"):
        check_launch(args, hooks_on_model=True)
    check_launch(args, hooks_on_model=False)  # plain training: the parent Trainer's behaviour


def test_the_trainer_itself_refuses_both(tmp_path, monkeypatch):
    args = _args(tmp_path, sigreg_mode="weak", sigreg_layers=[r"body\.0"], sigreg_pooling="none")
    args._n_gpu = 2
    with pytest.raises(LaunchError, match="DataParallel"):
        SIGRegTrainer(model=_Tiny(), args=args)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="see a world of 1"):
        SIGRegTrainer(model=_Tiny(), args=_args(tmp_path))


WORKER = textwrap.dedent(
    """
    import os, sys, torch
    from pathlib import Path
    from torch import nn
    from sigreg_hf import SIGRegConfig, SIGRegTrainer
    from sigreg_hf.launch import LaunchError
    # each rank reports into its own file: two ranks printing to one pipe interleave their lines
    report = Path(sys.argv[1]) / f"rank{os.environ['RANK']}.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    model = nn.Sequential(nn.Linear(4, 2))
    args = SIGRegConfig(output_dir=sys.argv[1], report_to="none", use_cpu=sys.argv[2] == "cpu")
    try:
        SIGRegTrainer(model=model, args=args)
    except LaunchError as error:
        report.write_text(f"REFUSED {error}")
        raise
    report.write_text(f"WORLD {args.world_size}")
    """
)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_real_two_process_launch_without_use_cpu_is_refused(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(WORKER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               CUDA_VISIBLE_DEVICES="")  # fmt: skip
    config = Path(__file__).resolve().parents[1] / "accelerate_configs" / "cpu_2proc.yaml"
    base = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", str(port), str(script), str(tmp_path / "out")]  # fmt: skip
    refused = subprocess.run([*base, "gpu"], env=env, capture_output=True, text=True, timeout=240)
    assert refused.returncode != 0
    reports = [(tmp_path / "out" / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert all(r.startswith("REFUSED") and "2 processes were launched (WORLD_SIZE=2)" in r for r in reports), reports
    ok = subprocess.run([*base, "cpu"], env=env, capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert [(tmp_path / "out" / f"rank{rank}.txt").read_text() for rank in (0, 1)] == ["WORLD 2"] * 2
