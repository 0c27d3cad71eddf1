"""Cross-rank BatchNorm for the ResNet recipes under DDP, on GPUs and on CPU (gloo) alike.

Under DDP each rank's BatchNorm sees only its share of the batch (16 of the paper's 128 on 8 GPUs).
``torch.nn.SyncBatchNorm`` normalises with the global batch's statistics, but only for accelerator inputs: it
raises on CPU tensors (``torch.batch_norm_stats`` has no CPU kernel). :class:`CrossRankBatchNorm` acts as
``SyncBatchNorm`` (torch's kernels) on CUDA/XPU and adds a CPU path built from an autograd-aware
all-reduce (:func:`sigreg_hf.losses.all_reduce_sum`), so CPU multi-process training (``accelerate launch``
with gloo) and the tests can use it.

Convert the model *before* wrapping it in DDP (or ``accelerator.prepare``)::

    if should_sync_batchnorm(model, world_size, "auto"):
        model = convert_sync_batchnorm(model)

The state_dict keys are those of ``nn.BatchNorm*d``, so checkpoints load into converted and plain models alike.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sigreg_hf.losses import all_reduce_sum

__all__ = ["CrossRankBatchNorm", "SyncBatchNormSetting", "convert_sync_batchnorm", "should_sync_batchnorm"]

SyncBatchNormSetting = Literal["auto", "true", "false"]


def _torch_sync_devices() -> tuple[str, ...]:
    """Device types whose inputs go to torch's own SyncBatchNorm kernels (those its forward accepts)."""
    return ("cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name())


class CrossRankBatchNorm(_BatchNorm):
    """``nn.SyncBatchNorm`` that also synchronises CPU inputs (gloo), with the same results and buffers.

    * CUDA/XPU inputs: ``SyncBatchNorm``'s own forward (torch's kernels; in eval mode, without a process
      group or with a group of one rank that is ordinary batch norm).
    * other (CPU) inputs in eval mode, without a process group or with a group of one rank: ordinary batch norm.
    * CPU inputs in training mode with a group of several ranks (``process_group``, default the world):
      the per-channel count, sum and sum of squares are summed over the ranks with one differentiable
      all-reduce; the input is normalised with the global mean and biased variance, and the running
      statistics are updated like torch does (unbiased variance with the global count, ``momentum=None``
      as a cumulative average). Statistics are computed in float32 (float64 for float64 inputs) and the
      output is cast back to the input's dtype.

    Every rank of the group must run the forward (and the backward, when the output needs a gradient) of
    the same layers in the same order, as with torch's ``SyncBatchNorm``; a rank may hold zero rows.

    It is deliberately *not* a subclass of ``nn.SyncBatchNorm``: ``DistributedDataParallel`` refuses any
    ``SyncBatchNorm`` instance in a CPU module ("SyncBatchNorm layers only work with GPU modules"). It has
    the same constructor, attributes and state_dict, and borrows ``SyncBatchNorm``'s forward for accelerators.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype, bias=bias
        )
        self.process_group = process_group

    # torch's own checks: any input of at least 2 dimensions (N, C, ...), and C > 0
    _check_input_dim = nn.SyncBatchNorm._check_input_dim
    _check_non_zero_input_channels = nn.SyncBatchNorm._check_non_zero_input_channels

    def forward(self, input: Tensor) -> Tensor:
        """Batch norm with the statistics of the whole group's batch (see the class docstring)."""
        if input.device.type in _torch_sync_devices():
            # torch's SyncBatchNorm forward, called on this module (it only reads the attributes above)
            return nn.SyncBatchNorm.forward(self, input)
        group = self._cpu_sync_group()
        if group is None:
            return super().forward(input)  # ordinary batch norm (torch's would raise for a CPU input)
        return self._cpu_sync_forward(input, group)

    def _cpu_sync_group(self) -> dist.ProcessGroup | None:
        """The group to synchronise a CPU input over in training mode; None where there is nothing to sync."""
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def _cpu_sync_forward(self, input: Tensor, group: dist.ProcessGroup) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        stat_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.to(stat_dtype)
        local_count = input.numel() // channels

        # Local sums around a per-rank shift (the local mean, a constant): sum(x^2) = sum((x-s)^2) + 2 s sum(x) - n s^2
        # holds for any s, and with s near the mean the float32 sums lose nothing to cancellation. The
        # global combination happens in float64 (cheap: 2C+1 numbers).
        local_sum = x.sum(dims)
        shift = (local_sum / max(local_count, 1)).detach()
        view = [1, channels] + [1] * (input.dim() - 2)
        centred_sq = (x - shift.view(view)).square().sum(dims)
        sum64, shift64 = local_sum.double(), shift.double()
        local_sq = centred_sq.double() + 2 * shift64 * sum64 - local_count * shift64.square()
        count = torch.full((1,), float(local_count), dtype=torch.float64)
        total = all_reduce_sum(torch.cat([sum64, local_sq, count]), group=group)

        global_count = int(round(total[-1].item()))
        if global_count < 2:
            raise ValueError(
                "Expected more than 1 value per channel when training, got a global count of "
                f"{global_count} per channel over {dist.get_world_size(group)} ranks (input size {list(input.shape)})"
            )
        mean = total[:channels] / global_count
        var = (total[channels : 2 * channels] / global_count - mean.square()).clamp_min(0.0)  # biased
        self._update_running_stats(mean.detach(), var.detach(), global_count)

        invstd = torch.rsqrt(var + self.eps).to(stat_dtype)
        scale, offset = invstd, -mean.to(stat_dtype) * invstd
        if self.weight is not None:
            scale = scale * self.weight.to(stat_dtype)
            offset = offset * self.weight.to(stat_dtype)
        if self.bias is not None:
            offset = offset + self.bias.to(stat_dtype)
        return (x * scale.view(view) + offset.view(view)).to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, global_count: int) -> None:
        """Momentum (or cumulative-average) update of the running buffers, as torch's batch norm does it."""
        if not self.track_running_stats:
            return
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / float(self.num_batches_tracked.item())
        else:
            factor = self.momentum
        if self.running_mean is not None:
            updated = factor * mean + (1.0 - factor) * self.running_mean.double()
            self.running_mean.copy_(updated.to(self.running_mean.dtype))
        if self.running_var is not None:
            unbiased = var * (global_count / (global_count - 1))
            updated = factor * unbiased + (1.0 - factor) * self.running_var.double()
            self.running_var.copy_(updated.to(self.running_var.dtype))

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
        """:func:`convert_sync_batchnorm` (torch's classmethod would build plain ``nn.SyncBatchNorm`` layers)."""
        return convert_sync_batchnorm(module, process_group)


def convert_sync_batchnorm(module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a :class:`CrossRankBatchNorm`, like torch's converter.

    The new layers share the old ones' parameters (so ``requires_grad`` and any optimizer references
    carry over) and buffers, keep the training flag, and have the same state_dict keys. Other modules are
    left as they are (their children re-registered in place, under the same names). A module without
    BatchNorm, or a :class:`CrossRankBatchNorm` already, comes back unchanged. ``module`` itself is
    returned unless it is a BatchNorm layer, in which case the new layer is.

    Args:
        module: the model (convert before wrapping it in DDP / ``accelerator.prepare``).
        process_group: the group to synchronise over (default: the world, at forward time).
    """
    if isinstance(module, CrossRankBatchNorm):
        return module
    converted = module
    if isinstance(module, _BatchNorm):
        converted = CrossRankBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group if process_group is not None else getattr(module, "process_group", None),
            bias=module.bias is not None,
        )
        # share, not copy: the parameters keep requires_grad and their identity
        if module.weight is not None:
            converted.weight = module.weight
        if module.bias is not None:
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
        if hasattr(module, "qconfig"):
            converted.qconfig = module.qconfig
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, process_group)
        if new_child is not child or converted is not module:
            converted.add_module(name, new_child)
    return converted


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` contains a BatchNorm layer (any ``nn.modules.batchnorm._BatchNorm``)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def should_sync_batchnorm(model: nn.Module, world_size: int, setting: SyncBatchNormSetting | str) -> bool:
    """Whether to convert ``model``'s BatchNorm layers to :class:`CrossRankBatchNorm`.

    Args:
        model: the (unwrapped) model.
        world_size: the number of training processes.
        setting: ``"auto"``: when ``world_size > 1`` and the model has a BatchNorm layer; ``"true"`` /
            ``"false"``: forced (``"true"`` on one process is harmless: the layers then act as plain BatchNorm).
    """
    choice = str(setting).strip().lower()
    if choice == "true":
        return True
    if choice == "false":
        return False
    if choice == "auto":
        return world_size > 1 and has_batchnorm(model)
    raise ValueError(f"sync_batchnorm must be 'auto', 'true' or 'false'; got {setting!r}.")
