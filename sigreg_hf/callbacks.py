"""SIGRegMonitorCallback: watch representations collapse (or stay isotropic) during any Trainer run.

Every ``every_n_steps`` optimiser steps the callback runs the model (in eval mode, without gradients)
on a held batch, captures the tapped layers with :class:`sigreg_hf.taps.SIGRegulariser` (capture only,
no loss) and logs, per layer:

* ``<prefix><layer>/strong``: the strong SIGReg statistic (sliced Epps-Pulley vs N(0, I));
* ``<prefix><layer>/weak``: the weak statistic ``||cov(sketch) - I||_F``;
* ``<prefix><layer>/effective_rank``: ``exp(entropy(lambda / sum(lambda)))`` of the covariance eigenvalues
  (between 1 for a collapsed, one-direction cloud and C for an isotropic one);
* ``<prefix><layer>/condition_number``: ``lambda_max / lambda_min`` of the covariance (``lambda_min`` floored
  at ``1e-12 * lambda_max``, so a rank-deficient covariance, e.g. with N <= C, reads about 1e12).

The statistics use fixed random projections per layer (seeded from ``seed`` and the layer index, the
same at every step), so values are comparable over time; they are local to the process (no all-reduce).
It works in any ``transformers.Trainer`` (and with ``SIGRegTrainer(sigreg_mode="none")``): values are
merged into the log entry of the monitored step (the callback asks for a log at that step) in
``state.log_history`` and in the ``logs`` that later callbacks see. Outside Trainer, call :meth:`compute`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from sigreg_hf.losses import sigreg_strong, sigreg_weak
from sigreg_hf.taps import SIGRegulariser, step_generator, unwrap_model

__all__ = ["SIGRegMonitorCallback", "covariance_spectrum_stats"]

_COND_FLOOR = 1e-12


def covariance_spectrum_stats(x: Tensor) -> dict[str, float]:
    """Effective rank and condition number of the covariance of ``x`` ([N, C]), in float64."""
    samples = x.detach().to(torch.float64)
    centred = samples - samples.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / max(samples.shape[0] - 1, 1)
    eig = torch.linalg.eigvalsh(cov).clamp_min(0.0)
    total = float(eig.sum())
    if total <= 0.0 or not math.isfinite(total):
        return {"effective_rank": 0.0, "condition_number": math.inf}
    p = eig / total
    p = p[p > 0]
    effective_rank = float(torch.exp(-(p * p.log()).sum()))
    lam_max = float(eig.max())
    condition = lam_max / max(float(eig.min()), _COND_FLOOR * lam_max)
    return {"effective_rank": effective_rank, "condition_number": condition}


class SIGRegMonitorCallback(TrainerCallback):
    """Log SIGReg diagnostics of the tapped layers on a held batch every ``every_n_steps`` steps.

    Args:
        batch: the held batch: a dict of model inputs (``labels`` is dropped) or a tensor passed
            positionally. Keep it fixed (e.g. the first ``N`` validation images); N should exceed C for a
            meaningful condition number.
        every_n_steps: monitoring period in optimiser steps (also at step 0 via :meth:`compute` if wanted).
        layers: ``"auto"`` or module-name regexes, as ``sigreg_layers``.
        pooling: as ``sigreg_pooling``.
        sketch_dim, num_points, t_max: the statistics' options (as in SIGRegConfig).
        seed: seed of the fixed per-layer projections.
        prefix: log-key prefix.
        eval_mode: run the model in eval mode (dropout off, BatchNorm running statistics); its mode is
            restored afterwards.
    """

    def __init__(
        self,
        batch: Mapping[str, Any] | Tensor,
        every_n_steps: int = 100,
        *,
        layers: str | list[str] = "auto",
        pooling: str = "auto",
        sketch_dim: int = 64,
        num_points: int = 17,
        t_max: float = 5.0,
        seed: int = 0,
        prefix: str = "monitor/",
        eval_mode: bool = True,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1; got {every_n_steps!r}.")
        if not isinstance(batch, (Mapping, Tensor)):
            raise ValueError(f"batch must be a dict of model inputs or a tensor; got {type(batch).__name__}.")
        self.batch = batch
        self.every_n_steps = every_n_steps
        self.layers = layers
        self.pooling = pooling
        self.sketch_dim = sketch_dim
        self.num_points = num_points
        self.t_max = t_max
        self.seed = seed
        self.prefix = prefix
        self.eval_mode = eval_mode
        self._regulariser: SIGRegulariser | None = None
        self._pending: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    # -- computation --------------------------------------------------------------------------------
    def _inputs(self, device: torch.device) -> tuple[tuple, dict[str, Any]]:
        if isinstance(self.batch, Tensor):
            return (self.batch.to(device),), {}
        kwargs = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.batch.items() if k != "labels"}
        return (), kwargs

    @torch.no_grad()
    def compute(self, model: nn.Module) -> dict[str, float]:
        """The diagnostics of ``model`` on the held batch, ``{"<prefix><layer>/<stat>": value}``."""
        base = unwrap_model(model)
        if self._regulariser is None or self._regulariser.model is not base:
            self._regulariser = SIGRegulariser(
                base,
                mode="none",
                layers=self.layers,
                pooling=self.pooling,
                sketch_dim=self.sketch_dim,
                num_points=self.num_points,
                t_max=self.t_max,
                seed=self.seed,
                distributed=False,
            )
        reg = self._regulariser
        try:
            device = next(base.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        args, kwargs = self._inputs(device)
        was_training = base.training
        if self.eval_mode:
            base.eval()
        try:
            with reg:
                base(*args, **kwargs)
                pooled = reg.pooled(attention_mask=kwargs.get("attention_mask"))
        finally:
            base.train(was_training)
        metrics: dict[str, float] = {}
        for index, (name, x) in enumerate(pooled.items()):
            x = x.float()
            key = f"{self.prefix}{name}"
            metrics[f"{key}/strong"] = float(
                sigreg_strong(
                    x,
                    num_slices=self.sketch_dim,
                    num_points=self.num_points,
                    t_max=self.t_max,
                    generator=step_generator(self.seed, 0, index),
                    distributed=False,
                    check_finite=False,
                )
            )
            metrics[f"{key}/weak"] = float(
                sigreg_weak(
                    x,
                    sketch_dim=self.sketch_dim,
                    generator=step_generator(self.seed, 0, index),
                    distributed=False,
                    check_finite=False,
                )
            )
            for stat, value in covariance_spectrum_stats(x).items():
                metrics[f"{key}/{stat}"] = value
        return metrics

    # -- Trainer hooks --------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step % self.every_n_steps != 0:
            return control
        self._pending = self.compute(model)
        self.history.append({"step": state.global_step, **self._pending})
        control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending:
            return control
        if logs is not None and not any(key.startswith("eval_") for key in logs):
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = {}
        return control
