"""The README's Python examples run as written (with small stand-ins for the user's model and data)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from sigreg_test_models import FAMILIES, DictDataset

from sigreg_hf import sigreg_weak

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def padded_text(n: int, seed: int) -> DictDataset:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(8) < torch.randint(2, 9, (n,), generator=g)[:, None]).long()
    ids = torch.randint(1, 60, (n, 8), generator=g) * mask
    return DictDataset(input_ids=ids, attention_mask=mask, labels=torch.randint(0, 3, (n,), generator=g))


def stand_ins() -> dict:
    """What the examples take from the reader: a text model with padded batches, a loader, an optimiser."""
    model = FAMILIES["bert"].model()
    train, test = padded_text(32, 0), padded_text(16, 1)
    loader = [{k: torch.stack([train[i][k] for i in range(j, j + 8)]) for k in train[0]} for j in (0, 8, 16)]
    return {
        "model": model, "train": train, "test": test, "loader": loader,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "h": torch.randn(256, 32), "g": torch.Generator().manual_seed(0),
        "tokens": torch.randn(16, 8, 32), "attention_mask": padded_text(16, 2).columns["attention_mask"],
    }  # fmt: skip


def test_readme_has_the_examples_this_test_runs():
    blocks = python_blocks()
    assert "SIGRegTrainer(" in blocks[0] and "SIGRegulariser(" in blocks[1] and "sigreg_strong(" in blocks[2]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Trainer example writes to ./out
    namespace = stand_ins()
    before = {n: p.detach().clone() for n, p in namespace["model"].named_parameters()}
    exec(compile(python_blocks()[index], f"README.md python block {index + 1}", "exec"), namespace)
    if index == 0:
        history = namespace["trainer"].state.log_history
        assert any("sigreg_loss" in entry for entry in history)
    if index == 1:
        assert torch.isfinite(namespace["loss"])
    if index in (0, 1):  # training really happened
        after = dict(namespace["model"].named_parameters())
        assert any(not torch.equal(after[n].detach(), p) for n, p in before.items())
    if index == 2:
        assert torch.isfinite(namespace["reg"]) and namespace["loss_fn"](namespace["h"]) >= 0
        real = namespace["tokens"][namespace["attention_mask"].bool()]  # C = 32 <= 64: no random sketch
        torch.testing.assert_close(namespace["reg"], sigreg_weak(real))


def test_readme_trl_example_runs(tmp_path, monkeypatch):
    """The "Use with TRL" block, on a tiny Llama and a word-level tokenizer (use_cpu added: SFTConfig's default
    bf16 needs it on a machine without a GPU)."""
    pytest.importorskip("trl")
    from test_mixin import _llama, _sft_data, _tokenizer

    block = python_blocks()[3]
    assert "class SFTSIGRegTrainer(SIGRegMixin, SFTTrainer)" in block and "logging_steps=1)" in block
    monkeypatch.chdir(tmp_path)
    # a real module, as a user's script is: the Trainer pickles the config class into its checkpoints
    module = types.ModuleType("readme_trl_block")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    module.__dict__.update(model=_llama(), train=_sft_data(), tokenizer=_tokenizer())
    code = compile(block.replace("logging_steps=1)", "logging_steps=1, use_cpu=True)"), "README TRL block", "exec")
    exec(code, module.__dict__)
    logs = [e for e in module.trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all({"sigreg_loss", "mean_token_accuracy", "entropy"} <= set(e) for e in logs)
