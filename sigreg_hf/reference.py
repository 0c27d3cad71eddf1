"""The seed document's two losses, line for line, with the random matrices injectable.

These are the ground truth that :mod:`sigreg_hf.losses` is tested and benchmarked against. They
are slow (the strong one materialises a complex ``[N, K, 17]`` tensor) and are not used in
training. Pass the same ``projection`` / ``sketch`` to both implementations to compare them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def seed_sigreg_strong(x: Tensor, projection: Tensor) -> Tensor:
    """The seed's ``sigreg_strong_loss`` with ``A`` given (already column-normalised, ``[C, K]``)."""
    n, _ = x.size()
    a = projection
    t = torch.linspace(-5, 5, 17, device=x.device, dtype=x.dtype)
    exp_f = torch.exp(-0.5 * t**2)
    proj = x @ a
    args = proj.unsqueeze(2) * t.view(1, 1, -1)
    ecf = torch.exp(1j * args).mean(dim=0)
    diff_sq = (ecf - exp_f.unsqueeze(0)).abs().square()
    err = diff_sq * exp_f.unsqueeze(0)
    loss = torch.trapz(err, t, dim=1) * n
    return loss.mean()


def seed_sigreg_weak(x: Tensor, sketch: Tensor | None) -> Tensor:
    """The seed's ``sigreg_weak_loss`` with ``S`` given (``[k, C]``), or None for no sketch."""
    n, c = x.size()
    if sketch is not None:
        sketch_dim = sketch.shape[0]
        x = x @ sketch.T
    else:
        sketch_dim = c
    x = x - x.mean(dim=0, keepdim=True)
    cov = (x.T @ x) / (n - 1 + 1e-6)
    target = torch.eye(sketch_dim, device=x.device, dtype=x.dtype)
    return torch.norm(cov - target, p="fro")
