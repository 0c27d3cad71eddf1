"""Push a run folder to the Hugging Face Hub: one ``HfApi.upload_folder`` commit with an explicit allow-list.

What goes up (:func:`hub_files`): the weights (safetensors, sharded or not, or a PEFT adapter), ``config.json``,
the image processor / tokenizer / generation configs, the model's own remote-code files (the modules named by
``config.json``'s ``auto_map`` and the files they import relatively, and no other code), the card
(``README.md``), ``results.json``, ``log_history.csv``, the plots and ``recipe.yaml``. Anything else in the
folder (checkpoints, ``training_args.bin``, a stray ``my_secrets.py``) stays local.

The card: a ``README.md`` the user wrote is kept (pass ``overwrite_readme=True`` to replace it); a card
generated here (it carries :data:`~sigreg_hf.experiments.card.CARD_MARKER`) or a missing one is rebuilt for the
target repository. The push writes nothing into the run folder: the upload is staged in a temporary folder of
links, so a failed push leaves the folder exactly as it was.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from transformers.dynamic_module_utils import get_relative_import_files

from sigreg_hf.experiments.card import build_model_card, is_generated_card
from sigreg_hf.experiments.record import (
    ACCURACY_PLOT_FILE,
    LOG_CSV_FILE,
    LOSS_PLOT_FILE,
    RECIPE_FILE,
    RESULTS_FILE,
)

__all__ = ["HUB_FILE_PATTERNS", "HubPushError", "hub_files", "push_run_to_hub", "remote_code_files"]

logger = logging.getLogger(__name__)

README = "README.md"
WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors")
ADAPTER_WEIGHTS = "adapter_model.safetensors"

#: Top-level files of a run folder that go to the Hub (fnmatch patterns), besides the remote-code files.
HUB_FILE_PATTERNS: tuple[str, ...] = (
    *WEIGHT_PATTERNS,
    "model.safetensors.index.json",
    ADAPTER_WEIGHTS,
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    README,
    RESULTS_FILE,
    LOG_CSV_FILE,
    LOSS_PLOT_FILE,
    ACCURACY_PLOT_FILE,
    "overlay_*.png",
    RECIPE_FILE,
)


class HubPushError(RuntimeError):
    """An upload to the Hub failed; the run folder is unchanged (the message says how to retry)."""


def remote_code_files(run_dir: str | Path) -> list[str]:
    """The model's own code in ``run_dir``: the modules ``config.json``'s ``auto_map`` names, plus the files
    they import relatively (what ``trust_remote_code`` loading needs), sorted.

    An ``auto_map`` entry that points at another repository (``"org/repo--module.Class"``) needs no local file.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return []
    auto_map = json.loads(config_path.read_text(encoding="utf-8")).get("auto_map") or {}
    references: list[str] = []
    for value in auto_map.values():
        references += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v]
    files: set[str] = set()
    for reference in references:
        if "--" in reference:
            continue
        module_file = run_dir / f"{reference.rsplit('.', 1)[0]}.py"
        if not module_file.is_file():
            raise ValueError(
                f"{config_path} names the remote-code module {module_file.name} in auto_map, but {run_dir} has no "
                "such file: save the model with save_pretrained() so that its code is copied beside the weights."
            )
        files.add(module_file.name)
        try:
            files.update(Path(f).name for f in get_relative_import_files(module_file))
        except FileNotFoundError as err:
            raise ValueError(
                f"{module_file.name} (named by auto_map in {config_path}) imports {Path(err.filename).name}, which "
                f"{run_dir} lacks: save the model with save_pretrained() so that all its code is copied."
            ) from err
    return sorted(files)


def hub_files(run_dir: str | Path) -> list[str]:
    """The files of ``run_dir`` that :func:`push_run_to_hub` uploads (top level only, sorted).

    Raises:
        ValueError: the folder has no ``config.json`` + safetensors weights (nor a PEFT adapter:
            ``adapter_config.json`` + ``adapter_model.safetensors``); a ``pytorch_model.bin`` checkpoint must
            be re-saved with ``save_pretrained``, which writes safetensors.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"Run directory {run_dir} does not exist.")
    names = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    selected = {n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in HUB_FILE_PATTERNS)}
    has_model = "config.json" in selected and any(fnmatch.fnmatch(n, p) for n in selected for p in WEIGHT_PATTERNS)
    has_adapter = {"adapter_config.json", ADAPTER_WEIGHTS} <= selected
    if not (has_model or has_adapter):
        missing = [n for n in ("config.json", "model.safetensors") if n not in selected]
        hint = (
            " It holds pytorch_model.bin: load it and call save_pretrained() to write safetensors."
            if "pytorch_model.bin" in names
            else " Train with `sigreg-hf train` (it saves the final model) or call model.save_pretrained(run_dir)."
        )
        raise ValueError(f"{run_dir} is not a complete checkpoint: missing {missing}.{hint}")
    if has_model and "preprocessor_config.json" not in selected and "tokenizer_config.json" not in selected:
        logger.warning("%s has no preprocessor or tokenizer config: users will have to rebuild it.", run_dir)
    return sorted(selected | set(remote_code_files(run_dir)))


def _retry_hint(run_dir: Path, repo_id: str, private: bool) -> str:
    flag = " --private" if private else ""
    return f"sigreg-hf push {run_dir} --repo_id {repo_id}{flag}"


def push_run_to_hub(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    overwrite_readme: bool = False,
    api: HfApi | None = None,
) -> Any:
    """Create (if needed) the model repository ``repo_id`` and upload the run's files in one commit.

    Args:
        run_dir: the run folder (checkpoint + outputs).
        repo_id: ``"ORG/NAME"`` (or ``"NAME"`` for the token's user).
        private: create the repository private (no effect on an existing one).
        token: a Hub token (default: the logged-in one / ``HF_TOKEN``).
        revision: branch to commit to (default ``main``).
        commit_message: default ``"Upload <run name> (sigreg_hf)"``.
        overwrite_readme: replace a ``README.md`` the user wrote by a generated card (default: keep it).
        api: a ``huggingface_hub.HfApi`` (default: a new one with ``token``).

    Returns:
        What ``HfApi.upload_folder`` returns (a ``CommitInfo``).

    Raises:
        ValueError: the folder is not a complete checkpoint (see :func:`hub_files`).
        HubPushError: the Hub refused or could not be reached; the run folder is unchanged.
    """
    run_dir = Path(run_dir)
    files = hub_files(run_dir)
    readme = run_dir / README
    user_readme = readme.is_file() and not is_generated_card(readme) and not overwrite_readme
    build_card = not user_readme and (run_dir / RESULTS_FILE).is_file()
    if not user_readme and not build_card and README in files:
        files.remove(README)  # a stale generated card without the record it describes
    api = api if api is not None else HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="sigreg_hf_push_") as stage_dir:
        stage = Path(stage_dir)
        for name in files:
            if not (build_card and name == README):
                _link(run_dir / name, stage / name)
        if build_card:
            build_model_card(run_dir, repo_id=repo_id).save(stage / README)
            files = sorted(set(files) | {README})
        try:
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
            info = api.upload_folder(
                repo_id=getattr(repo_url, "repo_id", None) or repo_id,
                folder_path=stage,
                allow_patterns=files,
                commit_message=commit_message or f"Upload {run_dir.name} (sigreg_hf)",
                repo_type="model",
                revision=revision,
                token=token,
            )
        except Exception as err:  # noqa: BLE001 - any Hub/network failure: keep the files, explain the retry
            raise HubPushError(
                f"Upload of {run_dir} to the Hub repository {repo_id!r} failed ({type(err).__name__}: {err}). "
                f"Nothing was changed in {run_dir}. Check the network and your token (`hf auth login` or "
                f"HF_TOKEN), then retry with:\n    {_retry_hint(run_dir, repo_id, private)}"
            ) from err
    logger.info("Pushed %d files from %s to %s", len(files), run_dir, repo_id)
    return info


def _link(source: Path, target: Path) -> None:
    """Stage ``source`` as ``target`` without copying its bytes where the filesystem allows."""
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copy2(source, target)
