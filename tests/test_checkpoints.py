"""Issue 11, item 3: a folder that holds checkpoints is resumed or overwritten on request, never reused silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sigreg_hf.checkpoints import OutputDirectoryInUseError, existing_checkpoints, resolve_resume


def _checkpoints(root: Path, *steps: int) -> None:
    for step in steps:
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_fresh_start_in_a_folder_with_checkpoints_is_refused(tmp_path):
    _checkpoints(tmp_path, 40, 119)
    with pytest.raises(OutputDirectoryInUseError, match=r"2 checkpoint\(s\) \(checkpoint-40, checkpoint-119\).*"
                       r"--resume_from_checkpoint latest.*--overwrite_output_dir true"):  # fmt: skip
        resolve_resume(tmp_path, None)
    assert [p.name for p in existing_checkpoints(tmp_path)] == ["checkpoint-40", "checkpoint-119"]


@pytest.mark.parametrize("latest", ["latest", "last", True, "True"])
def test_latest_resumes_the_newest_checkpoint(tmp_path, latest):
    _checkpoints(tmp_path, 9, 40, 119)
    assert resolve_resume(tmp_path, latest) == str(tmp_path / "checkpoint-119")


def test_latest_without_checkpoints_starts_fresh(tmp_path):
    assert resolve_resume(tmp_path / "new", "latest") is None
    (tmp_path / "results.json").write_text("{}")  # outputs without checkpoints do not block a fresh start
    assert resolve_resume(tmp_path, None) is None


def test_explicit_path_and_overwrite(tmp_path):
    _checkpoints(tmp_path, 5)
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoint-5")) == str(tmp_path / "checkpoint-5")
    with pytest.raises(FileNotFoundError, match="checkpoint-6 is not a checkpoint folder"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-6"))
    (tmp_path / "keep.txt").write_text("user file")
    assert resolve_resume(tmp_path, None, overwrite_output_dir=True) is None
    assert existing_checkpoints(tmp_path) == [] and (tmp_path / "keep.txt").exists()


def test_latest_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    _checkpoints(tmp_path, 10, 20)
    (tmp_path / "checkpoint-30").mkdir()  # kill -9 while saving: weights written, trainer_state.json not yet
    (tmp_path / "checkpoint-30" / "model.safetensors").write_bytes(b"partial")
    assert resolve_resume(tmp_path, "latest") == str(tmp_path / "checkpoint-20")
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text('{"global_st')  # truncated JSON
    assert resolve_resume(tmp_path, "latest") == str(tmp_path / "checkpoint-10")


def test_latest_with_only_incomplete_checkpoints_is_an_error(tmp_path):
    (tmp_path / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(OutputDirectoryInUseError, match="none is complete"):
        resolve_resume(tmp_path, "latest")
