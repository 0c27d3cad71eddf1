"""scripts/bench_padding.py runs (quick sizes) and times what it says: the selecting regulariser really selects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_prints_the_table():
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_padding.py"), "--quick", "--threads", "1"],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 50% |")]
    assert [row.split("|")[2].strip() for row in rows] == ["none", "weak-select", "weak-mask", "strong-select",
                                                           "strong-mask"]  # fmt: skip
    assert all(row.split("|")[4].strip().endswith("x") for row in rows if "-mask" in row)


def test_the_selecting_regulariser_takes_the_old_path():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_padding
    finally:
        sys.path.pop(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))  # fmt: skip
    data = bench_padding.PaddedTokens(4, 8, 50, padding=0.5)
    batch = {"input_ids": data.ids, "attention_mask": data.mask}
    for cls, kept in ((bench_padding.SelectingRegulariser, int(data.mask.sum())), (bench_padding.SIGRegulariser, 32)):
        reg = cls(model, mode="weak", layers=[r"model\.layers\.0"], check_finite=False)
        with reg:
            model(**batch)
            rows = reg._pool(None, batch["attention_mask"], keep_padding=True)
        (x, mask), = rows.values()
        assert x.shape[0] == kept and (mask is None) == (cls is bench_padding.SelectingRegulariser)
    assert torch.all(data.mask.sum(1) >= 2)
