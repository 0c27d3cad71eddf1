"""Model cards, Hub push (intercepted at the huggingface_hub API boundary) and download-and-evaluate from the cache.

No Hub is reachable here: pushes are caught at ``HfApi.create_repo`` / ``HfApi.create_commit`` (huggingface_hub
talks httpx, which HTTP mocking libraries do not intercept), and downloads are replaced by a checkpoint laid
into the Hub cache layout and read with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, metadata_load

from sigreg_hf import cli_train
from sigreg_hf.hub import (
    HubPushError,
    build_model_card,
    evaluate_checkpoint,
    hub_files,
    push_run_to_hub,
    trainer_push_to_hub,
    write_model_card,
)
from sigreg_hf.quickstart import digits_dataset, ensure_run_outputs

REPO = Path(__file__).resolve().parents[1]
SMALL_MLP = '{"hidden_size": 48, "num_hidden_layers": 2}'
EXPECTED_NON_CODE = {
    "model.safetensors", "config.json", "preprocessor_config.json", "README.md", "loss_curves.png",
    "accuracy_curves.png", "results.json", "log_history.csv", "recipe.yaml",
}  # fmt: skip


@pytest.fixture(scope="module")
def digits_path(tmp_path_factory) -> Path:
    return digits_dataset(tmp_path_factory.mktemp("data") / "digits", seed=0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, digits_path) -> Path:
    """A real 2-epoch run of the weak-SIGReg MLP recipe (small widths) through the training CLI."""
    out = tmp_path_factory.mktemp("runs") / "mlp_weak"
    argv = [
        "--recipe", "mlp_sgd_weak", "--output_dir", str(out), "--dataset_name", str(digits_path),
        "--model_overrides", SMALL_MLP, "--num_train_epochs", "2", "--image_size", "8", "--crop_padding", "0",
        "--hflip", "false", "--mean_std", "dataset", "--dataloader_num_workers", "0", "--save_strategy", "epoch",
        "--save_total_limit", "1", "--logging_strategy", "epoch", "--disable_tqdm", "true",
    ]  # fmt: skip
    record = cli_train.main(argv)
    ensure_run_outputs(out, record, "mlp_sgd_weak", "python scripts/train.py " + " ".join(argv))
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    return out


def _intercept_hub(monkeypatch, *, fail: Exception | None = None) -> dict:
    """Replace the two HfApi calls a push makes; record what would have been sent."""
    sent: dict = {"create_repo": [], "commits": []}

    def create_repo(self, repo_id, *, private=False, exist_ok=False, repo_type=None, token=None, **kwargs):
        sent["create_repo"].append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        if fail is not None:
            raise fail
        files = {}
        for op in operations:
            with open(op.path_or_fileobj, "rb") as fh:
                files[op.path_in_repo] = fh.read()
        sent["commits"].append({"repo_id": repo_id, "files": files, "message": commit_message})
        return {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"}

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return sent


# --------------------------------------------------------------------------------------------------
# the card
# --------------------------------------------------------------------------------------------------
def test_card_renders_and_model_index_parses_back(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    path = write_model_card(trained_run, repo_id="sigreg-org/mlp-weak-digits")
    card = ModelCard.load(path)
    evals = {r.metric_type: r for r in card.data.eval_results}
    assert set(evals) == {"accuracy", "top_5_accuracy", "best_epoch_accuracy"}
    assert evals["accuracy"].metric_value == pytest.approx(results["final_top1"], abs=1e-3)
    assert evals["top_5_accuracy"].metric_value == pytest.approx(results["final_top5"], abs=1e-3)
    assert evals["best_epoch_accuracy"].metric_value == pytest.approx(results["best_top1"], abs=1e-3)
    for r in evals.values():
        assert r.task_type == "image-classification" and r.dataset_split == "test"
        assert r.dataset_type == "digits"  # a local folder is named by its last component
    meta = metadata_load(path)
    assert meta["model-index"][0]["name"] == "mlp-weak-digits"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert "sigreg-weak" in meta["tags"]
    text = card.text
    for needle in ("## Training recipe", "python scripts/train.py --recipe mlp_sgd_weak", "## Results",
                   "![Loss", "(loss_curves.png)", "(accuracy_curves.png)", "## Intended use and limits",
                   "arXiv:2511.08544", "https://github.com/kreasof-ai/sigreg", "Weak SIGReg",
                   'from_pretrained("sigreg-org/mlp-weak-digits")', "trust_remote_code=True"):  # fmt: skip
        assert needle in text, needle
    assert "42.17" not in text  # the recipe's CIFAR-100 number is no reference for a 10-class run
    assert not re.search(r"\{\{ *\w+ *\}\}|\{%", text)  # every template variable and tag was rendered


def test_card_for_a_hub_dataset_lists_it_and_handles_missing_results(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    results = json.loads((run / "results.json").read_text())
    results.update({"dataset": "uoft-cs/cifar100", "final_top5": None, "best_top5": None})
    card = build_model_card(run, results=results, repo_id="o/n")
    assert card.data.datasets == ["uoft-cs/cifar100"]
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "best_epoch_accuracy"}
    assert all(r.dataset_name == "CIFAR-100" for r in card.data.eval_results)


# --------------------------------------------------------------------------------------------------
# push
# --------------------------------------------------------------------------------------------------
def test_push_sends_exactly_the_expected_files(tmp_path, trained_run, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "training_args.bin").write_bytes(b"not for the Hub")
    (run / "checkpoint-7").mkdir()
    (run / "checkpoint-7" / "optimizer.pt").write_bytes(b"x")
    (run / "_scratch.txt").write_text("x")
    sent = _intercept_hub(monkeypatch)
    push_run_to_hub(run, "sigreg-org/mlp-weak", private=True)
    assert sent["create_repo"] == [{"repo_id": "sigreg-org/mlp-weak", "private": True, "exist_ok": True}]
    assert len(sent["commits"]) == 1
    files = sent["commits"][0]["files"]
    code = {name for name in files if name.endswith(".py")}
    assert set(files) == EXPECTED_NON_CODE | code
    assert "configuration_sigreg.py" in code and {p.name for p in run.glob("*.py")} == code
    assert files["results.json"] == (run / "results.json").read_bytes()
    card = files["README.md"].decode()
    assert "model-index" in card and 'from_pretrained("sigreg-org/mlp-weak")' in card


def test_failed_push_keeps_everything_and_says_how_to_retry(tmp_path, trained_run, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sorted(p.name for p in run.iterdir())
    _intercept_hub(monkeypatch, fail=ConnectionError("Hub unreachable"))
    with pytest.raises(HubPushError) as info:
        push_run_to_hub(run, "sigreg-org/mlp-weak", private=True)
    message = str(info.value)
    assert "Hub unreachable" in message and "Nothing was deleted" in message
    assert f"python scripts/push_to_hub.py {run} --repo_id sigreg-org/mlp-weak --private" in message
    assert sorted(p.name for p in run.iterdir()) == before
    from sigreg_hf.cli import main

    assert main(["push", str(run), "--repo_id", "sigreg-org/mlp-weak"]) == 1
    err = capsys.readouterr().err
    assert "retry with" in err and "scripts/push_to_hub.py" in err


def test_incomplete_run_is_refused_before_any_upload(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    sent = _intercept_hub(monkeypatch)
    with pytest.raises(ValueError, match="save_pretrained"):
        push_run_to_hub(tmp_path, "o/n")
    assert sent == {"create_repo": [], "commits": []}


def test_trainer_push_path_sends_the_same_files(tmp_path, digits_path, monkeypatch):
    """A SIGRegTrainer trained in-process, pushed through sigreg_hf.hub.trainer_push_to_hub."""
    from sigreg_hf.config import SIGRegConfig
    from sigreg_hf.data import prepare_image_classification_data
    from sigreg_hf.metrics import build_compute_metrics
    from sigreg_hf.models import create_model
    from sigreg_hf.trainer import SIGRegTrainer

    data = prepare_image_classification_data(str(digits_path), image_size=8, crop_padding=0, hflip=False,
                                              mean_std="dataset")  # fmt: skip
    model = create_model("mlp", num_classes=10, image_size=8, hidden_size=32, num_hidden_layers=2)
    args = SIGRegConfig(
        output_dir=str(tmp_path / "trainer_run"), sigreg_mode="weak", sigreg_alpha=0.1, num_train_epochs=1,
        per_device_train_batch_size=128, learning_rate=0.1, eval_strategy="epoch", save_strategy="no",
        report_to="none", remove_unused_columns=False, use_cpu=True, disable_tqdm=True,
        hub_model_id="sigreg-org/trainer-run", hub_private_repo=False,
    )  # fmt: skip
    trainer = SIGRegTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                            data_collator=data.collator, processing_class=cli_train.build_image_processor(data),
                            compute_metrics=build_compute_metrics())  # fmt: skip
    trainer.train()
    sent = _intercept_hub(monkeypatch)
    trainer_push_to_hub(trainer)
    assert sent["create_repo"][0]["repo_id"] == "sigreg-org/trainer-run"
    files = set(sent["commits"][0]["files"])
    code = {name for name in files if name.endswith(".py")}
    assert files == (EXPECTED_NON_CODE - {"recipe.yaml"}) | code
    results = json.loads((tmp_path / "trainer_run" / "results.json").read_text())
    assert results["sigreg_mode"] == "weak" and len(results["test_top1_by_epoch"]) == 1


# --------------------------------------------------------------------------------------------------
# download and evaluate
# --------------------------------------------------------------------------------------------------
def _lay_into_hub_cache(run: Path, cache: Path, repo_id: str, revision: str = "0" * 40) -> None:
    """Copy the files a push sends into the Hub cache layout models--org--name/{refs/main, snapshots/<rev>/}."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    for name in hub_files(run):
        shutil.copy2(run / name, snapshot / name)


def test_checkpoint_from_hub_cache_offline_matches_local_run(tmp_path, trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    local = evaluate_checkpoint(str(trained_run), dataset_name=results["dataset"])
    # logged accuracies carry 4 decimals; one test image is 100/899 = 0.11 points, so 1e-3 means "same count"
    assert local["top1"] == pytest.approx(results["final_top1"], abs=1e-3)
    assert local["top5"] == pytest.approx(results["final_top5"], abs=1e-3)

    cache = tmp_path / "hub"
    _lay_into_hub_cache(trained_run, cache, "sigreg-org/mlp-weak")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN": ""}  # fmt: skip
    out_json = tmp_path / "metrics.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate_checkpoint.py"), "--model", "sigreg-org/mlp-weak",
         "--dataset_name", results["dataset"], "--output_json", str(out_json)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out_json.read_text())
    assert metrics["top1"] == pytest.approx(results["final_top1"], abs=1e-3)
    assert metrics["top5"] == pytest.approx(results["final_top5"], abs=1e-3)
    assert "top-1" in proc.stdout and metrics["num_images"] == results["eval_images"]


def test_offline_and_not_cached_fails_clearly(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1", "HF_TOKEN": ""}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate_checkpoint.py"), "--model", "nobody/nothing",
         "--dataset_name", "digits"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "nobody/nothing" in proc.stderr
