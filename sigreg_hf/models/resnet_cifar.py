"""ResNet18, CIFAR variant, as a transformers model.

3x3 stride-1 stem (conv + BN + ReLU), no max-pool, stages of torchvision ``BasicBlock``s
(64/128/256/512 channels, strides 1/2/2/2, 1x1 conv + BN shortcut on shape change), global average
pool, linear head. Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), so the usual CIFAR ResNet18 state dicts load directly.

Convolutions and the head keep PyTorch's default initialisation (the reference settings name none);
BatchNorm starts at weight 1, bias 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_sigreg import SigregResNetCifarConfig
from .modeling_common import SigregPreTrainedModel, check_pixel_values, init, torch_default_init_

__all__ = ["SigregResNetCifarForImageClassification"]


def _make_stage(in_planes: int, planes: int, depth: int, stride: int) -> nn.Sequential:
    blocks = []
    for i in range(depth):
        block_stride = stride if i == 0 else 1
        downsample = None
        if block_stride != 1 or in_planes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=block_stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        blocks.append(BasicBlock(in_planes, planes, stride=block_stride, downsample=downsample))
        in_planes = planes
    return nn.Sequential(*blocks)


class SigregResNetCifarForImageClassification(SigregPreTrainedModel):
    """ResNet18 (CIFAR variant) image classifier.

    SIGReg taps: the output of every BasicBlock (after its final ReLU), ``layer{s}.{b}``, reduced by a
    global average pool over H, W ("mean").
    """

    config_class = SigregResNetCifarConfig
    sigreg_tap_patterns: ClassVar[list[str]] = [r"layer\d+\.\d+"]
    sigreg_tap_pooling: ClassVar[str] = "mean"
    _no_split_modules: ClassVar[list[str]] = ["BasicBlock"]

    def __init__(self, config: SigregResNetCifarConfig) -> None:
        super().__init__(config)
        self.conv1 = nn.Conv2d(config.in_chans, config.stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = config.stem_width
        for idx, (width, depth) in enumerate(zip(config.widths, config.depths, strict=True)):
            stage = _make_stage(in_planes, width, depth, stride=1 if idx == 0 else 2)
            self.add_module(f"layer{idx + 1}", stage)
            in_planes = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            torch_default_init_(module)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    def _stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.config.widths))]

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        """Classify ``pixel_values [B, C, H, W]``.

        Args:
            labels: optional int64 ``[B]`` class indices; gives ``loss`` (cross-entropy). Float (soft)
                labels raise a ValueError.
            output_hidden_states: also return the stem output followed by every BasicBlock output
                (the SIGReg tap points), each ``[B, C, H, W]``.
            kwargs: ``num_items_in_batch`` (gradient accumulation) is honoured; others are ignored.
        """
        check_pixel_values(pixel_values, self.config.in_chans, None, type(self).__name__)
        want_hidden = self._want_hidden_states(output_hidden_states)
        x = self.relu(self.bn1(self.conv1(pixel_values)))
        hidden_states: list[torch.Tensor] = [x]
        for stage in self._stages():
            for block in stage:
                x = block(x)
                hidden_states.append(x)
        logits = self.fc(torch.flatten(self.avgpool(x), 1))
        return self._classifier_output(
            logits, labels, tuple(hidden_states) if want_hidden else None, return_dict, kwargs
        )
