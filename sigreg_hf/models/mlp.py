"""The paper's 6-layer MLP as a transformers model.

flatten (3 x 32 x 32 = 3072) -> 5 x [Linear(-> 1024), ReLU] -> Linear(1024 -> num_labels); no
normalisation, dropout or residuals; PyTorch's default Linear init.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_sigreg import SigregMLPConfig
from .modeling_common import SigregPreTrainedModel, check_pixel_values, torch_default_init_

__all__ = ["SigregMLPForImageClassification"]


class SigregMLPForImageClassification(SigregPreTrainedModel):
    """MLP image classifier.

    SIGReg taps: the output of each hidden Linear layer (``hidden.{i}``), i.e. the pre-activation,
    already ``[B, hidden_size]`` (pooling "none"). The ReLU is applied out of place so that a forward
    hook's view of the pre-activation is never overwritten.
    """

    config_class = SigregMLPConfig
    sigreg_tap_patterns: ClassVar[list[str]] = [r"hidden\.\d+"]
    sigreg_tap_pooling: ClassVar[str] = "none"

    def __init__(self, config: SigregMLPConfig) -> None:
        super().__init__(config)
        in_features = config.in_chans * config.image_size * config.image_size
        widths = [in_features] + [config.hidden_size] * config.num_hidden_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch_default_init_(module)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        """Classify ``pixel_values [B, C, H, W]`` (C = ``in_chans``, H = W = ``image_size``).

        Args:
            labels: optional int64 ``[B]`` class indices; gives ``loss`` (cross-entropy). Float (soft)
                labels raise a ValueError.
            output_hidden_states: also return the flattened input followed by every hidden layer's
                pre-activation (the SIGReg tap points), each ``[B, features]``.
            kwargs: ``num_items_in_batch`` (gradient accumulation) is honoured; others are ignored.
        """
        check_pixel_values(pixel_values, self.config.in_chans, self.config.image_size, type(self).__name__)
        want_hidden = self._want_hidden_states(output_hidden_states)
        x = pixel_values.flatten(1)
        hidden_states: list[torch.Tensor] = [x]
        for layer in self.hidden:
            pre_activation = layer(x)
            hidden_states.append(pre_activation)
            x = F.relu(pre_activation)
        logits = self.head(x)
        return self._classifier_output(
            logits, labels, tuple(hidden_states) if want_hidden else None, return_dict, kwargs
        )
