"""Issue 11 through the real training command: a kill -9 resumed with ``latest`` ends where the uninterrupted run
ends (crop + flip + RandAugment on, real CIFAR-10 images), a rerun never deletes a crashed run's checkpoints, and
no file a run writes holds the Hub token it was given."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"
CIFAR10_TARBALL = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
TOKEN = "hf_" + "ZyXwVuTsRqPoNmLkJiHgFeDcBa0123456789"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip


@pytest.fixture(scope="module")
def small_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real-image CIFAR-10 imagefolder: the first 32 train and 8 test JPEGs of each class from the archive."""
    if not CIFAR10_TARBALL.exists():
        pytest.skip(f"real CIFAR-10 not available at {CIFAR10_TARBALL}")
    root = tmp_path_factory.mktemp("cifar10_small")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR10_TARBALL) as tar:
        members = []
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in ("train", "test"):
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) < (32 if key[0] == "train" else 8):
                taken[key] = taken.get(key, 0) + 1
                members.append(member)
        tar.extractall(root, members=members, filter="data")
    split_root = next(p.parent for p in root.rglob("train") if p.is_dir())
    assert sum(1 for _ in (split_root / "train").rglob("*.jpg")) == 320
    return split_root


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(TRAIN_SCRIPT), "--recipe", "mlp_sgd_weak", "--dataset_name", str(data),
            "--mean_std", "cifar10", "--randaugment_num_ops", "2", "--per_device_train_batch_size", "16",
            "--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "2",
            "--logging_steps", "1", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
            "--write_plots", "false", "--output_dir", str(out), *extra]  # fmt: skip


def _weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


@pytest.mark.slow
def test_kill_9_then_resume_latest_ends_where_the_uninterrupted_run_ends(small_cifar10: Path, tmp_path: Path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    done = subprocess.run(_command(small_cifar10, whole), env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # 320 images / 16 = 20 steps per epoch; kill once checkpoint-16 is complete (mid-epoch 1, or a bit later)
    proc = subprocess.Popen(_command(small_cifar10, crashed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 600
    while not (crashed / "checkpoint-16" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (crashed / "results.json").exists()
    before = sorted(p.name for p in crashed.glob("checkpoint-*"))
    assert before and int(before[-1].split("-")[1]) < 40

    # the same command again: refused, and the crashed run's checkpoints are all still there
    again = subprocess.run(_command(small_cifar10, crashed), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode != 0
    assert "--resume_from_checkpoint latest" in again.stderr and "--overwrite_output_dir true" in again.stderr
    assert sorted(p.name for p in crashed.glob("checkpoint-*")) == before

    resumed = subprocess.run(_command(small_cifar10, crashed, "--resume_from_checkpoint", "latest"), env=_env(),
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(whole), _weights(crashed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (whole, crashed))
    assert ra["test_top1_by_epoch"] == rb["test_top1_by_epoch"] and ra["global_step"] == rb["global_step"] == 40
    la, lb = (_train_losses(r / "log_history.csv") for r in (whole, crashed))
    assert set(lb) and set(lb) <= set(la)
    assert all(lb[step] == pytest.approx(la[step], abs=1e-6) for step in lb)


def _train_losses(path: Path) -> dict[int, float]:
    with open(path, newline="") as fh:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(fh) if row.get("loss")}


@pytest.mark.slow
def test_no_file_a_run_writes_holds_the_hub_token(small_cifar10: Path, tmp_path: Path):
    out = tmp_path / "run"
    cmd = _command(small_cifar10, out, "--hub_token", TOKEN, "--max_steps", "4")
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any("checkpoint-4" in str(p) for p in files)
    leaks = [str(p.relative_to(out)) for p in files if TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert "<redacted>" in json.loads((out / "results.json").read_text())["command"]
    assert TOKEN not in done.stdout + done.stderr
