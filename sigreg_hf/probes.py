"""Probes of a representation: how many directions it uses, and how alike its rows are.

:func:`representation_stats` measures what SIGReg is meant to change (and what a collapse looks like), the same
probes the Weak-SIGReg repository reports for a network's residual stream:

* ``participation_ratio``: ``(sum lambda)^2 / sum lambda^2`` of the covariance eigenvalues: C for isotropic data,
  1 for a rank-one cloud;
* ``spectral_entropy``: natural-log entropy of ``lambda / sum lambda`` (``log C`` isotropic, 0 rank one);
* ``effective_rank``: ``exp(spectral_entropy)``;
* ``condition_number``: ``lambda_max / lambda_min`` over the ``min(N - 1, C)`` eigenvalues that ``N`` samples can
  measure (the rest are zero by construction when ``N <= C``), inf when a measurable one is zero;
* ``mean_pairwise_cosine``: mean cosine similarity over distinct pairs of rows (zero rows left out), from the sum
  of the unit rows: ``(||sum u||^2 - n) / (n (n - 1))``, so no ``N x N`` matrix is formed;
* ``norm_variance``: variance (``N - 1`` denominator) of the rows' L2 norms.

Every value is computed in float64 whatever the input precision; the covariance uses the ``N - 1`` denominator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["REPRESENTATION_STATS", "probe_model", "representation_stats"]

REPRESENTATION_STATS = (
    "participation_ratio",
    "spectral_entropy",
    "effective_rank",
    "condition_number",
    "mean_pairwise_cosine",
    "norm_variance",
)


def _rows(h: Tensor, mask: Tensor | None) -> Tensor:
    """``h`` as float64 ``[N, C]`` rows: ``[N, C]`` as is, ``[B, L, C]`` the tokens that ``mask`` keeps."""
    if not isinstance(h, Tensor) or h.is_complex() or h.dtype == torch.bool:
        raise TypeError(f"representation_stats takes a real tensor; got {getattr(h, 'dtype', type(h).__name__)}.")
    if h.dim() == 2:
        if mask is not None:
            if mask.shape != h.shape[:1]:
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not match rows {tuple(h.shape[:1])}.")
            h = h[mask.to(device=h.device, dtype=torch.bool)]
    elif h.dim() == 3:
        if mask is not None:
            if mask.shape != h.shape[:2]:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} does not match the [B, L] of h {tuple(h.shape[:2])}."
                )
            h = h[mask.to(device=h.device, dtype=torch.bool)]
        else:
            h = h.reshape(-1, h.shape[-1])
    else:
        raise ValueError(f"representation_stats takes [N, C] or [B, L, C]; got shape {tuple(h.shape)}.")
    rows = h.detach().to(torch.float64)
    if rows.shape[0] < 2:
        raise ValueError(f"representation_stats needs at least 2 rows (samples); got {rows.shape[0]}.")
    if not torch.isfinite(rows).all():
        raise ValueError("representation_stats: the representation holds NaN or inf values.")
    return rows


def _spectrum_stats(rows: Tensor) -> dict[str, float]:
    n, c = rows.shape
    centred = rows - rows.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (n - 1)
    eig = torch.linalg.eigvalsh(cov).clamp_min(0.0).flip(0)  # descending
    total = float(eig.sum())
    if total <= 0.0:  # every row the same point: no direction is used
        return {
            "participation_ratio": 0.0,
            "spectral_entropy": 0.0,
            "effective_rank": 0.0,
            "condition_number": math.inf,
        }
    p = eig / total
    nonzero = p[p > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    measurable = eig[: min(n - 1, c)]
    smallest = float(measurable[-1])
    return {
        "participation_ratio": total**2 / float((eig * eig).sum()),
        "spectral_entropy": entropy,
        "effective_rank": math.exp(entropy),
        "condition_number": float(measurable[0]) / smallest if smallest > 0 else math.inf,
    }


def _row_stats(rows: Tensor) -> dict[str, float]:
    norms = rows.norm(dim=1)
    units = rows[norms > 0] / norms[norms > 0, None]
    n = units.shape[0]
    if n >= 2:
        summed = units.sum(dim=0)
        cosine = (float(summed @ summed) - n) / (n * (n - 1))
    else:
        cosine = math.nan
    return {"mean_pairwise_cosine": cosine, "norm_variance": float(norms.var())}


def representation_stats(h: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """The probes of ``h`` (``[N, C]``, or ``[B, L, C]`` token states with a ``[B, L]`` padding mask).

    ``[B, L, C]`` without a mask counts every token as a row. Returns a dict with the keys of
    :data:`REPRESENTATION_STATS` (see the module docstring for each definition). Raises ``ValueError`` for fewer
    than 2 rows, a mask of the wrong shape, or non-finite values.
    """
    rows = _rows(h, mask)
    return {**_spectrum_stats(rows), **_row_stats(rows)}


@torch.no_grad()
def probe_model(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    layers: str | list[str] = "auto",
    pooling: str = "auto",
    mask_padding: bool = True,
) -> dict[str, dict[str, float]]:
    """:func:`representation_stats` of each tapped layer of ``model`` over ``batches`` (dicts of model inputs).

    The layers are chosen and pooled to ``[N, C]`` as the regulariser would (``layers`` / ``pooling`` /
    ``mask_padding`` as ``sigreg_layers`` / ``sigreg_pooling`` / ``sigreg_mask_padding``), so the probes describe
    what SIGReg sees; the rows of all batches are pooled together. The model runs in eval mode without gradients
    (its mode is restored); ``labels`` are not passed to it. Returns ``{layer name: stats}`` in model order.
    """
    from sigreg_hf.taps import SIGRegulariser, unwrap_model  # here: taps imports transformers (via config)

    base = unwrap_model(model)
    capture = SIGRegulariser(
        base, mode="none", layers=layers, pooling=pooling, mask_padding=mask_padding, distributed=False
    )
    try:
        device = next(base.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    rows: dict[str, list[Tensor]] = {}
    was_training = base.training
    base.eval()
    try:
        with capture:
            for batch in batches:
                inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items() if k != "labels"}
                base(**inputs)
                for name, pooled in capture.pooled(attention_mask=inputs.get("attention_mask")).items():
                    rows.setdefault(name, []).append(pooled.detach().to("cpu", torch.float64))
    finally:
        base.train(was_training)
    if not rows:
        raise ValueError("probe_model: no batches given (or the tapped layers never ran).")
    return {name: representation_stats(torch.cat(parts)) for name, parts in rows.items()}
