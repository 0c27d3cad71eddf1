"""Model cards, Hub push (intercepted at the huggingface_hub API boundary) and download-and-evaluate from the cache.

No Hub is reachable here: pushes are caught at ``HfApi.create_repo`` / ``HfApi.upload_folder`` (huggingface_hub
talks httpx, which HTTP mocking libraries do not intercept; the mock applies the allow-list with
huggingface_hub's own ``filter_repo_objects``, as ``upload_folder`` does), and downloads are replaced by a
checkpoint laid into the Hub cache layout and read with ``HF_HUB_OFFLINE=1``.
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
from huggingface_hub.utils import filter_repo_objects

from sigreg_hf.experiments import cli_train
from sigreg_hf.experiments.card import CARD_MARKER, build_model_card, write_model_card
from sigreg_hf.experiments.data.digits import digits_dataset
from sigreg_hf.experiments.evaluate import evaluate_checkpoint
from sigreg_hf.experiments.push import HubPushError, hub_files, push_run_to_hub, remote_code_files
from sigreg_hf.experiments.record import RunRecord
from sigreg_hf.experiments.run_outputs import write_run_outputs

REPO = Path(__file__).resolve().parents[2]
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
    cli_train.main(argv)
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    return out


def _intercept_hub(monkeypatch, *, fail: Exception | None = None) -> dict:
    """Replace the two HfApi calls a push makes; record what would have been sent."""
    sent: dict = {"create_repo": [], "commits": [], "allow_patterns": []}

    def create_repo(self, repo_id, *, private=False, exist_ok=False, repo_type=None, token=None, **kwargs):
        sent["create_repo"].append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, commit_message=None,
                      **kwargs):  # fmt: skip
        if fail is not None:
            raise fail
        folder = Path(folder_path)
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        kept = filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        files = {name: (folder / name).read_bytes() for name in kept}
        sent["allow_patterns"].append(list(allow_patterns or []))
        sent["commits"].append({"repo_id": repo_id, "files": files, "message": commit_message})
        return {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"}

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
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


def test_card_says_when_a_baseline_trained_on_a_scaled_cross_entropy(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    results.update({"sigreg_mode": "none", "sigreg_alpha": 0.0, "task_loss_scale": 0.9})
    text = build_model_card(trained_run, results=results, repo_id="o/n").text
    assert "trained on 0.9 x cross-entropy" in text and "plain cross-entropy" not in text
    results["task_loss_scale"] = 1.0
    assert "plain cross-entropy" in build_model_card(trained_run, results=results, repo_id="o/n").text


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
    (run / "my_secrets.py").write_text("HF_TOKEN = 'hf_not_for_the_hub'\n")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    sent = _intercept_hub(monkeypatch)
    push_run_to_hub(run, "sigreg-org/mlp-weak", private=True)
    assert sent["create_repo"] == [{"repo_id": "sigreg-org/mlp-weak", "private": True, "exist_ok": True}]
    assert len(sent["commits"]) == 1
    files = sent["commits"][0]["files"]
    code = {name for name in files if name.endswith(".py")}
    assert set(files) == EXPECTED_NON_CODE | code
    assert "my_secrets.py" not in files and not any(b"hf_not_for_the_hub" in data for data in files.values())
    # the model's own code: the auto_map modules and what they import relatively, nothing else
    auto_map = json.loads((run / "config.json").read_text())["auto_map"]
    named = {ref.rsplit(".", 1)[0] + ".py" for ref in auto_map.values()}
    assert named <= code and "configuration_sigreg.py" in code and "modeling_common.py" in code
    assert code == set(remote_code_files(run)) == {p.name for p in run.glob("*.py")} - {"my_secrets.py"}
    assert sent["allow_patterns"] == [sorted(files)]  # an explicit list of names, no wildcard
    assert files["results.json"] == (run / "results.json").read_bytes()
    card = files["README.md"].decode()
    assert "model-index" in card and 'from_pretrained("sigreg-org/mlp-weak")' in card and CARD_MARKER in card
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing written locally


def test_push_keeps_a_users_readme_unless_told_to_replace_it(tmp_path, trained_run, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    mine = "---\nlicense: mit\n---\n# My own notes on this model\n"
    (run / "README.md").write_text(mine)
    sent = _intercept_hub(monkeypatch)
    push_run_to_hub(run, "sigreg-org/mlp-weak")
    assert sent["commits"][-1]["files"]["README.md"].decode() == mine
    push_run_to_hub(run, "sigreg-org/mlp-weak", overwrite_readme=True)
    replaced = sent["commits"][-1]["files"]["README.md"].decode()
    assert CARD_MARKER in replaced and "model-index" in replaced
    assert (run / "README.md").read_text() == mine  # replaced on the Hub, not in the folder
    # a card generated here is rebuilt for the target repository without being asked
    write_model_card(run, repo_id="old/name")
    push_run_to_hub(run, "sigreg-org/new-name")
    assert 'from_pretrained("sigreg-org/new-name")' in sent["commits"][-1]["files"]["README.md"].decode()


def test_failed_push_keeps_everything_and_says_how_to_retry(tmp_path, trained_run, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "README.md").unlink(missing_ok=True)  # the push has to build a card: it must not land in the folder
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    _intercept_hub(monkeypatch, fail=ConnectionError("Hub unreachable"))
    with pytest.raises(HubPushError) as info:
        push_run_to_hub(run, "sigreg-org/mlp-weak", private=True)
    message = str(info.value)
    assert "Hub unreachable" in message and "Nothing was changed" in message
    assert f"sigreg-hf push {run} --repo_id sigreg-org/mlp-weak --private" in message
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    from sigreg_hf.experiments.cli import main

    assert main(["push", str(run), "--repo_id", "sigreg-org/mlp-weak"]) == 1
    err = capsys.readouterr().err
    assert "retry with" in err and "sigreg-hf push" in err


def test_incomplete_run_is_refused_before_any_upload(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    sent = _intercept_hub(monkeypatch)
    with pytest.raises(ValueError, match="save_pretrained"):
        push_run_to_hub(tmp_path, "o/n")
    assert sent == {"create_repo": [], "commits": [], "allow_patterns": []}


def test_a_trainer_run_recorded_with_run_record_pushes_the_same_files(tmp_path, digits_path, monkeypatch):
    """A SIGRegTrainer trained in-process: RunRecord.from_trainer + write_run_outputs + save_model, then pushed."""
    from sigreg_hf.config import SIGRegConfig
    from sigreg_hf.experiments.data import DataArguments, prepare_image_classification_data
    from sigreg_hf.experiments.metrics import build_compute_metrics
    from sigreg_hf.models import create_model
    from sigreg_hf.trainer import SIGRegTrainer

    data = prepare_image_classification_data(
        DataArguments(dataset_name=str(digits_path), image_size=8, crop_padding=0, hflip=False, mean_std="dataset")
    )
    model = create_model("mlp", num_classes=10, image_size=8, hidden_size=32, num_hidden_layers=2)
    out = tmp_path / "trainer_run"
    args = SIGRegConfig(
        output_dir=str(out), sigreg_mode="weak", sigreg_alpha=0.1, num_train_epochs=1,
        per_device_train_batch_size=128, learning_rate=0.1, eval_strategy="epoch", save_strategy="no",
        report_to="none", remove_unused_columns=False, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = SIGRegTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                            data_collator=data.collator, processing_class=cli_train.build_image_processor(data),
                            compute_metrics=build_compute_metrics())  # fmt: skip
    trainer.train()
    trainer.save_model(str(out))
    record = write_run_outputs(RunRecord.from_trainer(trainer, dataset_name="digits"), out)
    assert record.run_name == "trainer_run" and record.sigreg_mode == "weak" and record.sigreg_alpha == 0.1
    assert record.epochs == 1.0 and record.seed == args.seed
    sent = _intercept_hub(monkeypatch)
    push_run_to_hub(out, "sigreg-org/trainer-run")
    files = set(sent["commits"][0]["files"])
    code = {name for name in files if name.endswith(".py")}
    assert files == (EXPECTED_NON_CODE - {"recipe.yaml"}) | code
    results = json.loads((out / "results.json").read_text())
    assert results["sigreg_mode"] == "weak" and len(results["test_top1_by_epoch"]) == 1
    assert RunRecord.load(out) == record


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


def test_allow_list_for_text_and_adapter_folders_and_remote_code(tmp_path):
    """A LoRA adapter with its tokenizer goes up whole; the only code is what config.json's auto_map needs."""
    adapter = tmp_path / "lora"
    adapter.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "generation_config.json", "chat_template.jinja", "training_args.bin",
                 "my_secrets.py", "optimizer.pt"):  # fmt: skip
        (adapter / name).write_text("{}")
    assert hub_files(adapter) == sorted(
        [
            "adapter_model.safetensors",
            "adapter_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
            "chat_template.jinja",
        ]  # fmt: skip
    )
    model = tmp_path / "remote"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    (model / "config.json").write_text(json.dumps({"auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel",
        "AutoTokenizer": ["other/repo--tokenization_y.YTokenizer", None]}}))  # fmt: skip
    (model / "configuration_x.py").write_text("X = 1\n")
    (model / "modeling_x.py").write_text("from .configuration_x import X\nfrom .layers_x import L\n")
    (model / "layers_x.py").write_text("L = 2\n")
    (model / "my_secrets.py").write_text("TOKEN = 'x'\n")
    (model / "train.py").write_text("")
    assert remote_code_files(model) == ["configuration_x.py", "layers_x.py", "modeling_x.py"]
    assert [n for n in hub_files(model) if n.endswith(".py")] == ["configuration_x.py", "layers_x.py", "modeling_x.py"]
    (model / "layers_x.py").unlink()  # the model's code is incomplete: refuse before any upload
    with pytest.raises(ValueError, match="modeling_x.py .* imports layers_x.py"):
        hub_files(model)
    (model / "configuration_x.py").unlink()
    with pytest.raises(ValueError, match="remote-code module configuration_x.py"):
        hub_files(model)
