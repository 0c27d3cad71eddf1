"""Small, randomly initialised real models and synthetic datasets for the trainer/taps tests (offline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

IMAGE = 32
NUM_CLASSES = 10
SEQ_LEN = 8
VOCAB = 64


class DictDataset(Dataset):
    """A map-style dataset of dict rows built from equal-length tensors."""

    def __init__(self, **columns: torch.Tensor) -> None:
        lengths = {len(v) for v in columns.values()}
        assert len(lengths) == 1
        self.columns = columns
        self.n = lengths.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


class TinyMLP(nn.Module):
    """A plain nn.Module classifier that returns logits only (no loss, no config)."""

    def __init__(self, hidden: int = 32, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 3 * IMAGE * IMAGE
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


def image_data(n: int, seed: int = 0, soft: bool = False) -> DictDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
    w = torch.randn(3 * IMAGE * IMAGE, NUM_CLASSES, generator=torch.Generator().manual_seed(123))
    labels = (x.flatten(1) @ w).argmax(dim=1)
    if soft:
        perm = torch.roll(torch.arange(n), 1)
        lam = 0.7
        one_hot = nn.functional.one_hot(labels, NUM_CLASSES).float()
        return DictDataset(pixel_values=x, labels=lam * one_hot + (1 - lam) * one_hot[perm])
    return DictDataset(pixel_values=x, labels=labels)


def text_data(n: int, seed: int = 0, lm: bool = False) -> DictDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
    if lm:
        # a learnable sequence: token i+1 = token i + 1 (mod VOCAB)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        ids = (start + torch.arange(SEQ_LEN)) % VOCAB
        return DictDataset(input_ids=ids, labels=ids.clone())
    labels = (ids[:, 0] % 3).long()
    return DictDataset(input_ids=ids, labels=labels)


@dataclass
class Family:
    name: str
    taps: list[str]  # what sigreg_layers="auto" must resolve to
    has_batchnorm: bool = False

    def model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(self.name)

    @property
    def trainer_kwargs(self) -> dict[str, Any]:
        """Extra Trainer arguments: the plain MLP returns logits only, so its loss is a ``compute_loss_func``."""
        if self.name == "mlp":
            from sigreg_hf.soft_targets import soft_target_loss

            return {"compute_loss_func": soft_target_loss}
        return {}

    def data(self, n: int, seed: int = 0) -> DictDataset:
        if self.name == "bert":
            return text_data(n, seed)
        if self.name in ("gpt2", "llama"):
            return text_data(n, seed, lm=True)
        return image_data(n, seed)


def build_model(name: str) -> nn.Module:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        ResNetConfig,
        ResNetForImageClassification,
        TimmWrapperConfig,
        TimmWrapperForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    if name == "vit":
        return ViTForImageClassification(
            ViTConfig(
                image_size=IMAGE,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                num_labels=NUM_CLASSES,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        )
    if name == "resnet":
        return ResNetForImageClassification(
            ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[2, 1], layer_type="basic", num_labels=NUM_CLASSES
            )
        )
    if name == "bert":
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=32,
                num_labels=3,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        )
    if name == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB,
                n_embd=32,
                n_layer=2,
                n_head=2,
                n_positions=32,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    if name == "llama":  # no preset: found by the generic fallback, tokens flattened as a causal LM
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=32,
            )
        )
    if name == "timm":
        return TimmWrapperForImageClassification(
            TimmWrapperConfig(
                architecture="vit_tiny_patch16_224",
                num_labels=NUM_CLASSES,
                model_args={"img_size": IMAGE, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
            )
        )
    if name == "mlp":
        return TinyMLP()
    raise KeyError(name)


FAMILIES = {
    "vit": Family("vit", ["vit.layers.0", "vit.layers.1"]),
    "resnet": Family(
        "resnet",
        ["resnet.encoder.stages.0.layers.0", "resnet.encoder.stages.0.layers.1", "resnet.encoder.stages.1.layers.0"],
        has_batchnorm=True,
    ),
    "bert": Family("bert", ["bert.encoder.layer.0", "bert.encoder.layer.1"]),
    "gpt2": Family("gpt2", ["transformer.h.0", "transformer.h.1"]),
    "llama": Family("llama", ["model.layers.0", "model.layers.1"]),
    "timm": Family("timm", ["timm_model.blocks.0", "timm_model.blocks.1"]),
    "mlp": Family("mlp", ["net.1", "net.3"]),
}


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm layers in eval mode (running statistics) even under model.train().

    Train-mode BatchNorm normalises each micro-batch with its own statistics, so k micro-batches can never
    reproduce one big batch; freezing isolates what the gradient-accumulation test checks (the loss scaling).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            module.train = lambda mode=True, _m=module: _m  # type: ignore[method-assign]


def training_args(out: Any, **overrides: Any):
    from sigreg_hf.config import SIGRegConfig

    base: dict[str, Any] = dict(
        output_dir=str(out),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        optim="adamw_torch",
        max_steps=4,
        sigreg_mode="weak",
        sigreg_alpha=0.1,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        label_names=["labels"],
    )
    base.update(overrides)
    return SIGRegConfig(**base)


def losses(log_history: list[dict], key: str = "loss") -> list[float]:
    return [entry[key] for entry in log_history if key in entry and "train_runtime" not in entry]


def torchrun_ranks(worker_script: str, out: Any, nproc: int = 2, timeout: int = 300) -> list[dict]:
    """Run ``tests/<worker_script> OUT`` under torchrun (gloo, 1 thread each); load each rank's ``rank{r}.pt``."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(here.parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(here / worker_script), str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(Path(out) / f"rank{r}.pt") for r in range(nproc)]


def finish_worker() -> None:
    """End a torchrun test worker: wait for every rank, drop the process group, exit without interpreter teardown.

    With torch 2.14 + gloo about one exit in 15 aborted during teardown ("terminate called without an
    active exception") after everything, results included, had been written.
    """
    import os
    import sys

    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
