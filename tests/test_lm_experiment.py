"""scripts/lm_experiment.py: corpus parsing, the held-out split, and a few real SIGRegTrainer steps per mode."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

spec = importlib.util.spec_from_file_location("lm_experiment", REPO_ROOT / "scripts" / "lm_experiment.py")
lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lm)

WORDS = "and the lord said unto them behold I have given you every herb bearing seed which is upon the earth".split()


def write_corpus(path, verses: int = 1100) -> None:
    rng = random.Random(0)
    lines = [f"Ge{1 + i // 30}:{1 + i % 30} " + " ".join(rng.choices(WORDS, k=12)) + "." for i in range(verses)]
    path.write_text("\n".join(lines) + "\n")


def test_split_holds_out_every_twentieth_block_of_fifty_verses():
    verses = [f"v{i}" for i in range(2100)]
    train, val = lm.split_verses(verses)
    assert val == verses[950:1000] + verses[1950:2000]
    assert not set(train) & set(val) and len(train) + len(val) == len(verses)
    with pytest.raises(ValueError, match="no validation block"):
        lm.split_verses(verses[:900])


def test_malformed_corpus_line_is_named(tmp_path):
    corpus = tmp_path / "kjv.txt"
    corpus.write_text("Ge1:1 In the beginning God created the heaven and the earth.\nnot a verse\n")
    with pytest.raises(ValueError, match=r"kjv.txt:2: not a 'Book1:1 text' verse line"):
        lm.read_verses(corpus)
    corpus.write_text("1Cor13:4 Charity suffereth long.\n\nRev22:21 Amen.\n")
    assert lm.read_verses(corpus) == ["Charity suffereth long.", "Amen."]


@pytest.mark.parametrize("mode", ["none", "weak", "strong"])
def test_train_writes_validation_curve_and_regulariser(tmp_path, mode, single_thread):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus)
    out = tmp_path / mode
    lm.main(["train", "--corpus", str(corpus), "--output_dir", str(out), "--sigreg_mode", mode, "--max_steps", "4",
             "--eval_steps", "2", "--batch_size", "4", "--seq_len", "32", "--vocab_size", "300", "--hidden_size", "32",
             "--intermediate_size", "64", "--num_layers", "2", "--num_heads", "2", "--warmup_steps", "1"])  # fmt: skip
    record = json.loads((out / "results.json").read_text())
    assert record["steps"] == [2, 4] and len(record["val_loss_by_step"]) == 2
    assert all(math.isfinite(v) for v in record["val_loss_by_step"])
    assert record["val_perplexity_by_step"][-1] == pytest.approx(math.exp(record["val_loss_by_step"][-1]), rel=1e-3)
    assert record["tokens_trained"] == 4 * 4 * 32 and record["tokens_per_second"] > 0
    if mode == "none":
        assert record["sigreg_layers"] == [] and all(e.get("sigreg_loss") is None for e in record["train_log"])
    else:
        assert record["sigreg_layers"] == ["model.layers.0", "model.layers.1"]
        assert all(e["sigreg_loss"] > 0 for e in record["train_log"])
        assert all(v is not None and v > 0 for v in record["val_sigreg_loss_by_step"])


def test_report_writes_summary_and_curves(tmp_path, single_thread):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus)
    dirs = []
    for mode, seed in (("none", 0), ("none", 1), ("weak", 0)):
        out = tmp_path / f"{mode}{seed}"
        lm.main(["train", "--corpus", str(corpus), "--output_dir", str(out), "--sigreg_mode", mode, "--seed", str(seed),
                 "--max_steps", "2", "--eval_steps", "2", "--batch_size", "2", "--seq_len", "16", "--vocab_size",
                 "280", "--hidden_size", "16", "--intermediate_size", "32", "--num_layers", "2", "--num_heads", "1",
                 "--warmup_steps", "0"])  # fmt: skip
        dirs.append(str(out))
    lm.main(["report", *dirs, "--output_dir", str(tmp_path / "report")])
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [r["sigreg_mode"] for r in summary["runs"]] == ["none", "none", "weak"]
    assert summary["across_seeds"]["none"]["seeds"] == [0, 1]
    assert (tmp_path / "report" / "curves.png").stat().st_size > 0
