"""Run under torchrun (2 processes, gloo, CPU): SIGRegulariser in a custom loop on FSDP2-sharded HF models.

Each model's transformer blocks and the model itself are ``fully_shard``-ed over the 2 ranks; each rank trains
on its half of every global batch (mean task loss + alpha * SIGReg, plain SGD). Writes ``rank{r}.pt`` (logged
losses and the full parameters after the last step) into argv[1]; tests/test_fsdp.py compares them with one
process on the whole batches.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from sigreg_test_models import FAMILIES, finish_worker  # noqa: E402
from torch import nn  # noqa: E402

from sigreg_hf.taps import SIGRegulariser  # noqa: E402

STEPS = 3
GLOBAL_BATCH = 16
ALPHA = 0.5
CASES = (("vit", "strong"), ("vit", "weak"), ("bert", "weak"), ("llama", "strong"))


def batches(family: str) -> list[dict[str, torch.Tensor]]:
    """The global batches of a run (the same on every process); text rows have different padded lengths."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        if family == "vit":
            out.append({"pixel_values": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g),
                        "labels": torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)})  # fmt: skip
        elif family == "bert":
            mask = (torch.arange(8) < torch.randint(2, 9, (GLOBAL_BATCH,), generator=g)[:, None]).long()
            ids = torch.randint(1, 60, (GLOBAL_BATCH, 8), generator=g) * mask
            out.append({"input_ids": ids, "attention_mask": mask,
                        "labels": torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)})  # fmt: skip
        else:  # causal LM, every real token a sample; both halves have the same lengths (the same target count)
            half = torch.randint(2, 9, (GLOBAL_BATCH // 2,), generator=g)
            mask = (torch.arange(8) < torch.cat([half, half.flip(0)])[:, None]).long()
            ids = torch.randint(1, 60, (GLOBAL_BATCH, 8), generator=g) * mask
            out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask == 1, ids, -100)})
    return out


def blocks(model: nn.Module, family: str) -> list[nn.Module]:
    return {"vit": lambda: model.vit.layers, "bert": lambda: model.bert.encoder.layer,
            "llama": lambda: model.model.layers}[family]()  # fmt: skip


def train(family: str, mode: str, rank: int = 0, world_size: int = 1, mesh: Any = None) -> dict[str, Any]:
    """STEPS SGD steps; with a mesh the model is sharded and this rank trains on its chunk of each batch."""
    model = FAMILIES[family].model(seed=3)
    if mesh is not None:
        from torch.distributed.fsdp import fully_shard

        for block in blocks(model, family):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    # one process: the strict path (real tokens selected, decisions read on the host); the ranks: the trainer's
    # (check_finite=False: padding kept with a sample mask, decisions on the device)
    reg = SIGRegulariser(model, mode=mode, sketch_dim=16, seed=11, check_finite=mesh is None)
    logged = []
    for step, batch in enumerate(batches(family)):
        local = {k: v.chunk(world_size)[rank] for k, v in batch.items()}
        with reg:
            out = model(**local)
            sigreg = reg.loss(step=step, attention_mask=local.get("attention_mask"))
            loss = (1 - ALPHA) * out.loss + ALPHA * sigreg
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        logged.append({"task": out.loss.item(), "sigreg": sigreg.item()})
    params, local_numel = {}, 0
    for name, p in model.named_parameters():
        sharded = hasattr(p, "full_tensor")
        local_numel += p.to_local().numel() if sharded else p.numel()
        params[name] = (p.full_tensor() if sharded else p).detach().clone()
    kind = type(next(model.parameters())).__name__
    return {"logged": logged, "params": params, "param_class": kind, "local_numel": local_numel}


if __name__ == "__main__":
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world_size,))
    results = {f"{family}-{mode}": train(family, mode, rank, world_size, mesh) for family, mode in CASES}
    torch.save(results, Path(sys.argv[1]) / f"rank{rank}.pt")
    finish_worker()
