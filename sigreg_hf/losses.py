"""The two SIGReg statistics: strong (sliced Epps-Pulley) and weak (sketched covariance).

Both follow the seed document's formulas exactly (see :mod:`sigreg_hf.reference`), computed in
float32 (float64 for float64 inputs) whatever the input precision, and both can be a statistic of
the *global* batch under ``torch.distributed``: the sufficient statistics (characteristic-function
sums for strong, first and second moments for weak) are summed across ranks with an autograd-aware
all-reduce. This module is the only place in the library core that talks to ``torch.distributed``.

Distributed contract: every rank must pass the same ``projection``/``sketch`` (or a ``generator``
seeded identically on every rank, e.g. from the global step). Each rank then returns the same
global loss, and its backward gives its local rows ``world_size`` times their share of the global
gradient, so that DDP's gradient *averaging* yields exactly the single-process gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "SIGRegLoss",
    "draw_projection",
    "draw_sketch",
    "global_sample_counts",
    "global_sample_counts_on_device",
    "sigreg_strong",
    "sigreg_weak",
]

DistributedOption = bool | Literal["auto"]
SketchType = Literal["gaussian", "orthonormal"]

# Rows per chunk in the strong loss's eager kernel: [m, rows, K] float32 buffers stay cache-sized.
_CHUNK_ELEMENTS = 1 << 20


# ----------------------------------------------------------------------------------------------
# validation and shared helpers
# ----------------------------------------------------------------------------------------------
def _check_samples(x: Tensor, minimum: int = 2) -> None:
    """Shape and dtype checks; ``minimum``: the least number of rows (0 for one rank's share of a global batch)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"SIGReg expects a torch.Tensor of shape [N, C]; got {type(x).__name__}.")
    if x.dim() != 2:
        raise ValueError(
            f"SIGReg expects a 2-D tensor [N, C] (N samples, C features); got shape {tuple(x.shape)}. "
            "Reduce hidden states first: average-pool feature maps, mean/CLS-pool tokens, or flatten "
            "tokens to [B*L, D] (sigreg_hf.taps.pool_hidden_state does this)."
        )
    if not x.is_floating_point():
        raise ValueError(f"SIGReg expects a floating-point tensor; got dtype {x.dtype}.")
    if x.shape[0] < minimum:
        raise ValueError(
            f"SIGReg needs at least N = 2 samples to estimate a distribution; got N = {x.shape[0]}. "
            "Use a larger batch or flatten tokens into samples."
        )
    if x.shape[1] < 1:
        raise ValueError(f"SIGReg needs at least one feature column; got shape {tuple(x.shape)}.")


def _check_sample_mask(sample_mask: object, x: Tensor) -> Tensor:
    """``sample_mask`` as a ``[N]`` tensor on ``x``'s device in the statistics' dtype (1 = counted, 0 = left out)."""
    if not isinstance(sample_mask, Tensor) or sample_mask.dim() != 1 or sample_mask.shape[0] != x.shape[0]:
        shape = tuple(sample_mask.shape) if isinstance(sample_mask, Tensor) else type(sample_mask).__name__
        raise ValueError(
            f"sample_mask must be a [N] = [{x.shape[0]}] tensor (nonzero = the row counts), one entry per row of x; "
            f"got {shape}."
        )
    return (sample_mask.to(device=x.device) != 0).to(_statistics_dtype(x))


def _check_positive_int(value: object, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def _check_finite(loss: Tensor, global_count: Tensor | None = None) -> None:
    """Raise on a non-finite statistic: NaN/Inf anywhere in x propagates into it, so one scalar suffices.

    ``global_count`` (under torch.distributed: the all-reduced number of rows) is checked in the same host sync;
    every rank holds the same value, so every rank raises together.
    """
    # Data-dependent check: skipped while torch.compile traces (it would break the graph).
    if torch.compiler.is_compiling():
        return
    if global_count is not None:
        flags = torch.stack([global_count.reshape(()).to(loss.dtype), torch.isfinite(loss).to(loss.dtype)])
        count, finite = flags.tolist()  # one host sync for both
        if count < 2:
            raise ValueError(
                f"SIGReg needs at least N = 2 samples to estimate a distribution; the global batch over all "
                f"ranks (its rows in sample_mask, where given) has N = {int(count)}. Use a larger batch "
                "(SIGRegulariser skips such batches itself)."
            )
    else:
        finite = bool(torch.isfinite(loss))
    if not finite:
        raise ValueError(
            "SIGReg got a non-finite value: x contains NaN or Inf (or values so large that the statistic "
            "overflows). Check the model's activations (e.g. a diverging learning rate) or the input batch."
        )


def _statistics_dtype(x: Tensor) -> torch.dtype:
    """float64 inputs keep float64 (gradcheck); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _use_distributed(distributed: DistributedOption) -> bool:
    if distributed == "auto" and not isinstance(distributed, bool):
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed is True:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group "
                "(torchrun / accelerate launch); use distributed='auto' or False on one process."
            )
        return dist.get_world_size() > 1
    if distributed is False:
        return False
    raise ValueError(f"distributed must be True, False or 'auto'; got {distributed!r}.")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks too.

    Every rank computes the same global loss, so each rank's gradient w.r.t. the summed statistic is
    the same; summing them hands each rank's local rows ``world_size`` times their share, which DDP's
    gradient averaging divides back out.
    """

    @staticmethod
    def forward(ctx, values: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:  # noqa: D102
        ctx.group = group
        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        out = grad.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def all_reduce_sum(values: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Differentiable all-reduce SUM over ``group`` (default: the world): the backward all-reduces the gradient.

    Every rank of ``group`` must call it (forward and, where the result needs a gradient, backward) in the
    same order. Used by the losses here and by the experiments app's cross-rank BatchNorm.
    """
    return _AllReduceSum.apply(values, group)


_all_reduce_sum = all_reduce_sum


def global_sample_counts(
    counts: Sequence[int], *, device: torch.device | str | None = None, distributed: DistributedOption = "auto"
) -> list[int]:
    """Per-tensor sample counts summed over ranks: one small all-reduce under torch.distributed, else ``counts``.

    Every rank must call it with the same number of counts (``device``: where the collective runs, the
    data's device: a CUDA tensor for NCCL). The result is the same on every rank, so a decision taken from
    it (e.g. skipping a batch too small for the statistic) keeps all ranks' collectives matched.
    """
    values = [int(c) for c in counts]
    if not values or not _use_distributed(distributed):
        return values
    summed = global_sample_counts_on_device(values, device=device if device is not None else "cpu", distributed=True)
    return [int(v) for v in summed.tolist()]


def global_sample_counts_on_device(
    counts: Sequence[int | Tensor], *, device: torch.device | str, distributed: DistributedOption = "auto"
) -> Tensor:
    """:func:`global_sample_counts` left on ``device`` (int64 ``[len(counts)]``): no host read. A count may be a
    0-dim tensor already on the device (e.g. the sum of a sample mask).

    Under torch.distributed (``distributed`` as in :func:`sigreg_strong`) one all-reduce, enqueued like any
    other kernel; otherwise the counts themselves. The values are filled on the device (a tensor built from a Python
    list would be copied there, and that copy waits for the device's queued work).
    """
    packed = torch.stack([
        c.to(device=device, dtype=torch.int64).reshape(()) if isinstance(c, Tensor)
        else torch.full((), int(c), dtype=torch.int64, device=device)
        for c in counts
    ])  # fmt: skip
    if _use_distributed(distributed):
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Switch autocast off for the statistic (a no-op context when it is not on)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _random_source_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def draw_projection(
    num_features: int,
    num_slices: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The seed's random slicing directions: ``randn(C, K)`` with each column divided by its norm + 1e-6."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    a = torch.randn(
        num_features, num_slices, generator=generator, device=_random_source_device(generator, device)
    ).to(device=device, dtype=dtype)
    return a / (a.norm(p=2, dim=0, keepdim=True) + 1e-6)


def draw_sketch(
    sketch_dim: int,
    num_features: int,
    *,
    sketch_type: SketchType = "gaussian",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A ``[sketch_dim, C]`` sketch, applied as ``x @ sketch.T``.

    ``"gaussian"`` is the seed's ``randn(k, C) / sqrt(C)`` (the default; its rows are not orthonormal,
    so the weak loss's minimiser is about 0.89 I for C=512, k=64). ``"orthonormal"`` has orthonormal
    rows (QR of a Gaussian matrix), which removes that bias.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    source = _random_source_device(generator, device)
    if sketch_type == "gaussian":
        s = torch.randn(sketch_dim, num_features, generator=generator, device=source) / math.sqrt(num_features)
    elif sketch_type == "orthonormal":
        if sketch_dim > num_features:
            raise ValueError(f"an orthonormal sketch needs sketch_dim <= C; got {sketch_dim} > {num_features}.")
        g = torch.randn(num_features, sketch_dim, generator=generator, device=source, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        s = (q * torch.sign(torch.diagonal(r))).T  # sign fix: a Haar-distributed frame
    else:
        raise ValueError(f"sketch_type must be 'gaussian' or 'orthonormal'; got {sketch_type!r}.")
    return s.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# strong SIGReg: sliced Epps-Pulley
# ----------------------------------------------------------------------------------------------
def _folded_quadrature(num_points: int, t_max: float) -> tuple[list[float], list[float], bool]:
    """Positive knots of ``linspace(-t_max, t_max, num_points)`` and their folded trapezoid weights.

    The integrand ``|ecf(t) - phi(t)|^2 phi(t)`` is even in t and exactly 0 at t = 0, so the seed's
    17-point rule on [-5, 5] equals 8 knots on (0, 5] with doubled weights (the endpoint keeps the
    trapezoid's half weight, doubled). Returns the knots, the weights and whether the knots are the
    multiples ``h, 2h, ..., mh`` of the grid step h (odd ``num_points``).
    """
    step = 2.0 * t_max / (num_points - 1)
    offset = 1.0 if num_points % 2 == 1 else 0.5
    count = num_points // 2
    knots = [(j + offset) * step for j in range(count)]
    knots[-1] = t_max
    weights = [2.0 * step] * (count - 1) + [step]
    return knots, weights, num_points % 2 == 1


_QUADRATURE_CACHE: dict[tuple, tuple[Tensor, Tensor, Tensor, bool]] = {}


def _quadrature_tensors(
    num_points: int, t_max: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Knots, ``phi = exp(-t^2/2)`` at the knots, ``weights * phi``, and the uniform-grid flag (cached)."""
    key = (num_points, t_max, device, dtype)
    cached = None if torch.compiler.is_compiling() else _QUADRATURE_CACHE.get(key)
    if cached is None:
        knots_list, weights_list, multiples = _folded_quadrature(num_points, t_max)
        knots = torch.tensor(knots_list, device=device, dtype=dtype)
        phi = torch.exp(-0.5 * knots.square())
        cached = (knots, phi, torch.tensor(weights_list, device=device, dtype=dtype) * phi, multiples)
        if not torch.compiler.is_compiling():
            _QUADRATURE_CACHE[key] = cached
    return cached


def _harmonics(theta: Tensor, knots: Tensor, cos: Tensor, sin: Tensor) -> None:
    """Fill ``cos``/``sin`` (``[m, rows, K]``) with ``cos(t_j theta)`` and ``sin(t_j theta)``.

    On the uniform grid (knots ``h, 2h, ..., mh``) only ``cos(h theta)`` and ``sin(h theta)`` are
    evaluated; the higher harmonics come from exact angle-addition doubling (log2(m) stages of real
    complex multiplication), several times cheaper than m sin/cos evaluations.
    """
    m = knots.numel()
    torch.mul(theta, knots[0], out=cos[0])
    torch.sin(cos[0], out=sin[0])
    cos[0].cos_()
    have = 1
    while have < m:
        grow = min(have, m - have)
        c_top, s_top = cos[have - 1], sin[have - 1]
        c_lo, s_lo = cos[:grow], sin[:grow]
        c_new, s_new = cos[have : have + grow], sin[have : have + grow]
        # z^(have+i) = z^i * z^have
        torch.mul(c_lo, c_top, out=c_new)
        c_new.addcmul_(s_lo, s_top, value=-1.0)
        torch.mul(s_lo, c_top, out=s_new)
        s_new.addcmul_(c_lo, s_top)
        have += grow


def _direct_harmonics(theta: Tensor, knots: Tensor) -> tuple[Tensor, Tensor]:
    """``cos(t_j theta)`` and ``sin(t_j theta)`` for a non-uniform grid (even ``num_points``)."""
    args = knots.view(-1, 1, 1) * theta.unsqueeze(0)
    return torch.cos(args), torch.sin(args)


def _rows_per_chunk(n: int, m: int, k: int) -> int:
    return max(1, min(n, _CHUNK_ELEMENTS // max(1, m * k)))  # >= 1: a rank may hold no rows of a global batch


def _characteristic_sums_forward(proj: Tensor, knots: Tensor, multiples: bool) -> Tensor:
    n, k = proj.shape
    m = knots.numel()
    sums = proj.new_zeros(2, m, k)
    step = _rows_per_chunk(n, m, k)
    cos_work, sin_work = proj.new_empty(m, step, k), proj.new_empty(m, step, k)  # reused by every chunk
    for start in range(0, n, step):
        theta = proj[start : start + step]
        if multiples:
            cos, sin = cos_work[:, : theta.shape[0]], sin_work[:, : theta.shape[0]]
            _harmonics(theta, knots, cos, sin)
        else:
            cos, sin = _direct_harmonics(theta, knots)
        sums[0] += cos.sum(dim=1)
        sums[1] += sin.sum(dim=1)
    return sums


def _characteristic_sums_backward(proj: Tensor, knots: Tensor, multiples: bool, grad: Tensor) -> Tensor:
    """``d/dp`` of ``sum_j gC_j sum_n cos(t_j p_n) + gS_j sum_n sin(t_j p_n)``, recomputed chunk by chunk.

    Per element that is the trigonometric polynomial ``sum_j t_j (gS_j cos(t_j p) - gC_j sin(t_j p))``.
    On the uniform grid it is evaluated by Clenshaw's recurrence in ``u = cos(h p)``, which needs
    only ``[2, rows, K]`` buffers and one sin/cos pair per element.
    """
    n, k = proj.shape
    m = knots.numel()
    coef_cos = knots.view(m, 1) * grad[1]  # multiplies cos(t_j p)
    coef_sin = -knots.view(m, 1) * grad[0]  # multiplies sin(t_j p)
    out = torch.empty_like(proj)
    step = _rows_per_chunk(n, m, k)
    if not multiples:
        for start in range(0, n, step):
            cos, sin = _direct_harmonics(proj[start : start + step], knots)
            cos.mul_(coef_cos.unsqueeze(1))
            cos.addcmul_(sin, coef_sin.unsqueeze(1))
            torch.sum(cos, dim=0, out=out[start : start + step])
        return out
    coef = torch.stack([coef_cos, coef_sin], dim=1).unsqueeze(2)  # [m, 2, 1, K]
    cos_work, sin_work, twice_cos_work = (proj.new_empty(step, k) for _ in range(3))
    b_work = [proj.new_empty(2, step, k) for _ in range(3)]
    for start in range(0, n, step):
        theta = proj[start : start + step]
        rows = theta.shape[0]
        cos1, sin1, twice_cos = cos_work[:rows], sin_work[:rows], twice_cos_work[:rows]
        torch.mul(theta, knots[0], out=cos1)
        torch.sin(cos1, out=sin1)
        cos1.cos_()
        torch.mul(cos1, 2.0, out=twice_cos)
        # b_j = coef_j + 2u b_{j+1} - b_{j+2}, for j = m..1, both series at once
        later, current, spare = (b[:, :rows] for b in b_work)
        later.zero_()  # b_{m+1}
        current.copy_(coef[m - 1].expand(2, rows, k))  # b_m
        for j in range(m - 2, -1, -1):
            torch.addcmul(coef[j], current, twice_cos, out=spare)
            spare.sub_(later)
            later, current, spare = current, spare, later
        # sum_j a_j cos(j th) = cos(th) b_1 - b_2;  sum_j c_j sin(j th) = sin(th) b_1
        block = out[start : start + step]
        torch.mul(cos1, current[0], out=block)
        block.sub_(later[0])
        block.addcmul_(sin1, current[1])
    return out


class _CharacteristicSums(torch.autograd.Function):
    """``[2, m, K]`` sums over rows of ``cos(t_j p)`` and ``sin(t_j p)``; stores only ``p`` for backward."""

    @staticmethod
    def forward(ctx, proj: Tensor, knots: Tensor, multiples: bool) -> Tensor:  # noqa: D102
        ctx.save_for_backward(proj, knots)
        ctx.multiples = multiples
        return _characteristic_sums_forward(proj, knots, multiples)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        proj, knots = ctx.saved_tensors
        grad_proj = None
        if ctx.needs_input_grad[0]:
            grad_proj = _characteristic_sums_backward(proj, knots, ctx.multiples, grad.contiguous())
        return grad_proj, None, None


def _characteristic_sums(proj: Tensor, knots: Tensor, multiples: bool) -> Tensor:
    if torch.compiler.is_compiling():
        # Under torch.compile, a plain expression lets inductor fuse sin/cos with the reduction.
        args = proj.unsqueeze(0) * knots.view(-1, 1, 1)
        return torch.stack([torch.cos(args).sum(dim=1), torch.sin(args).sum(dim=1)])
    return _CharacteristicSums.apply(proj, knots, multiples)


def sigreg_strong(
    x: Tensor,
    *,
    num_slices: int = 64,
    num_points: int = 17,
    t_max: float = 5.0,
    projection: Tensor | None = None,
    generator: torch.Generator | None = None,
    distributed: DistributedOption = "auto",
    check_finite: bool = True,
    normalization: Literal["seed", "per_sample"] = "seed",
    sample_mask: Tensor | None = None,
) -> Tensor:
    """Strong SIGReg: the sliced Epps-Pulley statistic of ``x`` against N(0, I).

    For each of ``num_slices`` unit directions a_k, with p = x @ a_k, it integrates
    ``|ecf_p(t) - exp(-t^2/2)|^2 exp(-t^2/2)`` by the trapezoid rule over
    ``linspace(-t_max, t_max, num_points)``, multiplies by N and averages over slices, exactly as the
    seed's ``sigreg_strong_loss`` (LeJEPA Algorithm 1). The evaluation is real-valued, uses the
    evenness of the integrand (8 of 17 knots), and keeps only ``[N, K]`` for the backward.

    Args:
        x: ``[N, C]`` samples (any float dtype; statistics in float32, float64 for float64 input),
            N >= 2. Under torch.distributed N is the global batch (a rank may hold 0 or 1 rows); it is
            then checked with the finiteness (``check_finite``), in the same host sync.
        num_slices: K, the number of random directions.
        num_points: trapezoid knots on ``[-t_max, t_max]`` (the seed's 17).
        t_max: integration half-width (the seed's 5.0).
        projection: a ``[C, K]`` matrix used as given; when None, ``randn(C, K)`` is drawn from
            ``generator`` and each column divided by its norm + 1e-6.
        generator: RNG for the directions. Under DDP it must produce the same draw on every rank.
        distributed: ``"auto"`` (global-batch statistic when a process group of size > 1 is
            initialised), True (require one) or False (local batch only).
        check_finite: raise a ValueError when the statistic is not finite (NaN/Inf in x); one
            scalar device sync per call.
        normalization: ``"seed"`` (N times the integral, the seed's statistic: its expected value under a
            non-Gaussian law grows with N) or ``"per_sample"`` (the integral alone, i.e. divided by the
            global N: a strength independent of the batch size).
        sample_mask: ``[N]``, nonzero = the row is a sample: the statistic of those rows only (e.g. the real
            tokens of a padded batch), the same value as ``x[sample_mask]`` without the data-dependent shape,
            so without a host synchronisation; N is then the number of rows kept (checked with
            ``check_finite``).

    Returns:
        A 0-dim tensor, differentiable w.r.t. ``x``.
    """
    use_dist = _use_distributed(distributed)
    masked = sample_mask is not None
    _check_samples(x, minimum=0 if use_dist or masked else 2)
    if normalization not in ("seed", "per_sample"):
        raise ValueError(f"normalization must be 'seed' or 'per_sample'; got {normalization!r}.")
    _check_positive_int(num_slices, "num_slices")
    _check_positive_int(num_points, "num_points", minimum=2)
    if isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not math.isfinite(t_max) or t_max <= 0:
        raise ValueError(f"t_max must be a positive finite number; got {t_max!r}.")
    n, c = x.shape
    dtype = _statistics_dtype(x)
    keep = _check_sample_mask(sample_mask, x) if masked else None
    with _no_autocast(x.device):
        samples = x.to(dtype) if keep is None else x.to(dtype) * keep.unsqueeze(1)  # rows left out: 0, no gradient
        if projection is None:
            projection = draw_projection(c, num_slices, generator=generator, device=x.device, dtype=dtype)
        else:
            if not isinstance(projection, Tensor) or tuple(projection.shape) != (c, num_slices):
                shape = tuple(projection.shape) if isinstance(projection, Tensor) else type(projection).__name__
                raise ValueError(
                    f"projection must be a [C, num_slices] = [{c}, {num_slices}] matrix; got {shape}. "
                    "Pass num_slices equal to its number of columns."
                )
            projection = projection.to(device=x.device, dtype=dtype)
        proj = samples @ projection
        knots, phi, weighted_phi, multiples = _quadrature_tensors(num_points, float(t_max), x.device, dtype)

        sums = _characteristic_sums(proj, knots, multiples)
        if keep is None:
            count = torch.full((1,), float(n), device=x.device, dtype=dtype)
        else:
            # a row left out is 0: it added cos(0) = 1 to every cosine sum and sin(0) = 0 to the sine sums
            count = keep.sum().reshape(1)
            sums = torch.cat([sums[:1] - (n - count), sums[1:]])
        if use_dist:
            packed = _all_reduce_sum(torch.cat([sums.reshape(-1), count]))
            sums, count = packed[:-1].view_as(sums), packed[-1:]
        # clamp: a global batch of 0 rows (skipped on the device by SIGRegulariser) stays finite
        cos_mean, sin_mean = sums[0] / count.clamp(min=1), sums[1] / count.clamp(min=1)  # [m, K]
        err = (cos_mean - phi.unsqueeze(1)).square() + sin_mean.square()
        per_slice = weighted_phi @ err  # [K]
        if normalization == "seed":
            per_slice = per_slice * count
        loss = per_slice.mean()
    if check_finite:
        _check_finite(loss, count if use_dist or masked else None)
    return loss


# ----------------------------------------------------------------------------------------------
# weak SIGReg: sketched covariance towards I
# ----------------------------------------------------------------------------------------------
def sigreg_weak(
    x: Tensor,
    *,
    sketch_dim: int = 64,
    sketch: Tensor | None = None,
    generator: torch.Generator | None = None,
    distributed: DistributedOption = "auto",
    sketch_type: SketchType = "gaussian",
    check_finite: bool = True,
    sample_mask: Tensor | None = None,
) -> Tensor:
    """Weak SIGReg: ``||cov(x @ sketch.T) - I||_F``, the seed's ``sigreg_weak_loss``.

    Args:
        x: ``[N, C]`` samples (any float dtype; statistics in float32, float64 for float64 input),
            N >= 2. Under torch.distributed N is the global batch (a rank may hold 0 or 1 rows); it is
            then checked with the finiteness (``check_finite``), in the same host sync.
        sketch_dim: k. When C > k and no ``sketch`` is given, a ``[k, C]`` sketch is drawn
            (``randn(k, C) / sqrt(C)`` for ``sketch_type="gaussian"``, the seed's default); when
            C <= k, the covariance of x itself is used.
        sketch: a ``[k, C]`` matrix applied as ``x @ sketch.T``, used as given.
        generator: RNG for the sketch. Under DDP it must produce the same draw on every rank.
        distributed: as in :func:`sigreg_strong`; the global mean and the centred second moment
            are summed across ranks (two small all-reduces), so the covariance is the global one.
        sketch_type: ``"gaussian"`` (default) or ``"orthonormal"`` (unbiased: minimiser exactly I).
        check_finite: raise a ValueError on NaN/Inf inputs.
        sample_mask: as in :func:`sigreg_strong`: the covariance of the rows kept, without a host sync.

    Returns:
        A 0-dim tensor, differentiable w.r.t. ``x``. The covariance uses ``N - 1`` (+1e-6, as the seed).
    """
    use_dist = _use_distributed(distributed)
    masked = sample_mask is not None
    _check_samples(x, minimum=0 if use_dist or masked else 2)
    _check_positive_int(sketch_dim, "sketch_dim")
    if sketch_type not in ("gaussian", "orthonormal"):
        raise ValueError(f"sketch_type must be 'gaussian' or 'orthonormal'; got {sketch_type!r}.")
    n, c = x.shape
    dtype = _statistics_dtype(x)
    with _no_autocast(x.device):
        samples = x.to(dtype)
        if sketch is None and c > sketch_dim:
            sketch = draw_sketch(
                sketch_dim, c, sketch_type=sketch_type, generator=generator, device=x.device, dtype=dtype
            )
        if sketch is not None:
            if not isinstance(sketch, Tensor) or sketch.dim() != 2 or sketch.shape[1] != c:
                shape = tuple(sketch.shape) if isinstance(sketch, Tensor) else type(sketch).__name__
                raise ValueError(
                    f"sketch must be a [sketch_dim, C] = [k, {c}] matrix (applied as x @ sketch.T); got {shape}."
                )
            samples = samples @ sketch.to(device=x.device, dtype=dtype).T
        k = samples.shape[1]
        keep = _check_sample_mask(sample_mask, x).unsqueeze(1) if masked else None
        if keep is not None:
            samples = samples * keep  # rows left out: 0 in the sums, no gradient
        if use_dist or keep is not None:
            rows = torch.full((1,), float(n), device=x.device, dtype=dtype) if keep is None else keep.sum().reshape(1)
            packed = torch.cat([samples.sum(dim=0), rows])
            packed = _all_reduce_sum(packed) if use_dist else packed
            count = packed[-1]
            centred = samples - packed[:-1] / count.clamp(min=1)  # finite for 0 rows in all (see strong)
            if keep is not None:
                centred = centred * keep
            second = _all_reduce_sum(centred.T @ centred) if use_dist else centred.T @ centred
        else:
            count = n
            centred = samples - samples.mean(dim=0, keepdim=True)
            second = centred.T @ centred
        cov = second / (count - 1 + 1e-6)
        eye = torch.eye(k, device=x.device, dtype=dtype)
        loss = torch.linalg.matrix_norm(cov - eye, ord="fro")
    if check_finite:
        _check_finite(loss, torch.as_tensor(count, dtype=dtype, device=x.device) if use_dist or masked else None)
    return loss


# ----------------------------------------------------------------------------------------------
# module twin
# ----------------------------------------------------------------------------------------------
_STRONG_OPTIONS = ("num_slices", "num_points", "t_max", "normalization")
_WEAK_OPTIONS = ("sketch_dim", "sketch_type")


class SIGRegLoss(nn.Module):
    """``nn.Module`` twin of :func:`sigreg_strong` / :func:`sigreg_weak`.

    Example::

        loss_fn = SIGRegLoss(mode="weak", sketch_dim=64)
        reg = loss_fn(hidden)                      # hidden: [N, C]
        reg = loss_fn(hidden, generator=g)         # reproducible (and rank-consistent) sketch

    Options of the other mode are rejected rather than silently ignored.
    """

    def __init__(
        self,
        mode: Literal["weak", "strong"] = "weak",
        *,
        num_slices: int | None = None,
        num_points: int | None = None,
        t_max: float | None = None,
        sketch_dim: int | None = None,
        sketch_type: SketchType | None = None,
        normalization: Literal["seed", "per_sample"] | None = None,
        distributed: DistributedOption = "auto",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("weak", "strong"):
            raise ValueError(f"mode must be 'weak' or 'strong'; got {mode!r}.")
        given = {
            "num_slices": num_slices,
            "num_points": num_points,
            "t_max": t_max,
            "sketch_dim": sketch_dim,
            "sketch_type": sketch_type,
            "normalization": normalization,
        }
        allowed = _STRONG_OPTIONS if mode == "strong" else _WEAK_OPTIONS
        foreign = [name for name, value in given.items() if value is not None and name not in allowed]
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)} do not apply to mode={mode!r}; its options are {', '.join(allowed)}."
            )
        # Check the value only: the process group may be initialised later (Trainer / accelerate do it).
        if not (isinstance(distributed, bool) or distributed == "auto"):
            raise ValueError(f"distributed must be True, False or 'auto'; got {distributed!r}.")
        self.mode = mode
        self.options = {name: value for name, value in given.items() if value is not None}
        self.distributed = distributed
        self.check_finite = check_finite

    def forward(
        self,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        projection: Tensor | None = None,
        sketch: Tensor | None = None,
        sample_mask: Tensor | None = None,
    ) -> Tensor:
        """Compute the statistic of ``x`` ([N, C]); ``projection`` is for strong, ``sketch`` for weak;
        ``sample_mask`` ([N], nonzero = counted) leaves rows out without a host sync."""
        common = {"generator": generator, "distributed": self.distributed, "check_finite": self.check_finite,
                  "sample_mask": sample_mask}  # fmt: skip
        if self.mode == "strong":
            if sketch is not None:
                raise ValueError("sketch applies to mode='weak'; pass projection=[C, K] for mode='strong'.")
            return sigreg_strong(x, projection=projection, **self.options, **common)
        if projection is not None:
            raise ValueError("projection applies to mode='strong'; pass sketch=[k, C] for mode='weak'.")
        return sigreg_weak(x, sketch=sketch, **self.options, **common)

    def extra_repr(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"mode={self.mode!r}" + (f", {options}" if options else "")
