"""The classifier architectures of the evaluation, written here so their weight files load without torchvision.

torchxrayvision (the library whose classifiers BiomedJourney and InstructX2X evaluate with) cannot be
imported beside this project's CPU torch: `import torchxrayvision` imports torchvision (models.py,
datasets.py, baseline_models/*), scikit-image, pandas and imageio at module level, and torchvision breaks
`import transformers` here. Its weight files are plain PyTorch files, so the two architectures they need
are defined here with exactly the parameter names those files use (pinned by tests/test_reproduce.py):

* `DenseNet121` — torchxrayvision's pathology classifier (`xrv.models.DenseNet`): DenseNet-121
  (Huang et al. 2017: growth rate 32, blocks of 6 / 12 / 24 / 16 bottleneck layers with bottleneck width
  4 x 32, compression 0.5 in the transitions, 64 stem features), ONE input channel, a Linear head over
  18 pathologies. Keys `features.conv0.weight`, `features.denseblock1.denselayer1.norm1.weight`, ...,
  `features.norm5.*`, `classifier.*`.
* `ResNet34` — torchvision's ResNet-34 (He et al. 2016: basic blocks 3 / 4 / 6 / 3 at 64 / 128 / 256 / 512
  channels), the backbone of torchxrayvision's race model (Gichoya et al. 2022), whose head is
  `fc = Sequential(Linear(512, 3), LogSoftmax)` (keys `fc.0.*`).

The age model (Ieki et al. 2022, SENet-154) ships as a TorchScript archive that carries its own graph, so
it needs no architecture here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseNet121", "ResNet34"]


class _DenseLayer(nn.Sequential):
    """BN-ReLU-Conv1x1 (to bn_size x growth) then BN-ReLU-Conv3x3 (to growth); output concatenated."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__(OrderedDict([
            ("norm1", nn.BatchNorm2d(in_features)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv1", nn.Conv2d(in_features, bn_size * growth_rate, kernel_size=1, bias=False)),
            ("norm2", nn.BatchNorm2d(bn_size * growth_rate)),
            ("relu2", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([x, super().forward(x)], 1)


class _Transition(nn.Sequential):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(in_features)),
            ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(in_features, out_features, kernel_size=1, bias=False)),
            ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
        ]))


class DenseNet121(nn.Module):
    """DenseNet-121 with torchxrayvision's names; `forward` returns logits, `features2` the pooled 1024-d."""

    def __init__(self, in_channels: int = 1, num_classes: int = 18, growth_rate: int = 32,
                 block_config: tuple[int, ...] = (6, 12, 24, 16), num_init_features: int = 64,
                 bn_size: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        n = num_init_features
        for i, layers in enumerate(block_config, start=1):
            block = nn.Sequential(OrderedDict(
                (f"denselayer{j + 1}", _DenseLayer(n + j * growth_rate, growth_rate, bn_size)) for j in range(layers)
            ))
            self.features.add_module(f"denseblock{i}", block)
            n += layers * growth_rate
            if i != len(block_config):
                self.features.add_module(f"transition{i}", _Transition(n, n // 2))
                n //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(n))
        self.classifier = nn.Linear(n, num_classes)
        self.num_features = n

    def features2(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (ReLU + global average pool): torchxrayvision's `features2`."""
        out = F.relu(self.features(x))
        return F.adaptive_avg_pool2d(out, (1, 1)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features2(x))


class _BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet34(nn.Module):
    """torchvision's ResNet-34 layout; `head` replaces `fc` (the race model: Linear(512, 3) + LogSoftmax)."""

    def __init__(self, head: nn.Module | None = None, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
            stride = 1 if i == 1 else 2
            stage = nn.Sequential(*[_BasicBlock(inplanes if b == 0 else planes, planes, stride if b == 0 else 1)
                                    for b in range(blocks)])
            self.add_module(f"layer{i}", stage)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = head if head is not None else nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def race_resnet34() -> ResNet34:
    """The race model's network: ResNet-34 with fc = Sequential(Linear(512, 3), LogSoftmax(dim=1))."""
    return ResNet34(head=nn.Sequential(nn.Linear(512, 3), nn.LogSoftmax(dim=1)))
