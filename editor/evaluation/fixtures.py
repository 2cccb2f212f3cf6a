"""A classifier folder with random (or chosen) weights, in the real files' formats, for tests and dry runs.

Writes the three files `XrvClassifiers.from_folder` reads, under their release names:
* the pathology DenseNet-121 as a whole pickled module (the release files are pickled modules),
  optionally with a constant head (classifier weight 0, bias = the given logits) so its outputs are known;
* the race ResNet-34 as an `nn.DataParallel` state dict (keys `module.*`, like the release file),
  optionally with a constant head favouring one class;
* the age model as TorchScript with the release model's calling convention ((N, 3, 320, 320) ImageNet-
  normalised -> (N, 1) years). The release model is a SENet-154; this fixture is a small scripted
  network (mean brightness -> years), since a TorchScript file carries its own architecture.
The outputs are meaningless unless chosen: never for real evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from editor.evaluation.nets import DenseNet121, race_resnet34
from editor.evaluation.xrv_weights import (
    AGE_FILE,
    DEFAULT_PATHOLOGY_WEIGHTS,
    PATHOLOGY_WEIGHTS,
    RACE_FILE,
    RACE_LABELS,
    XRV_LABELS,
)

__all__ = ["write_classifier_folder"]


class _BrightnessAge(nn.Module):
    """years = 20 + 60 x mean of the de-normalised image (a known, image-dependent output)."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), requires_grad=False)
        self.std = nn.Parameter(torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x * self.std + self.mean
        return 20.0 + 60.0 * image.mean(dim=(1, 2, 3)).unsqueeze(1)


def write_classifier_folder(folder: str | Path, *, seed: int = 0, pathology: str = DEFAULT_PATHOLOGY_WEIGHTS,
                            pathology_logits: dict[str, float] | None = None,
                            race: str | None = None) -> Path:
    """Write the folder; `pathology_logits` (label -> logit, others -10) and `race` fix the outputs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dense = DenseNet121(in_channels=1, num_classes=len(XRV_LABELS)).eval()
    if pathology_logits is not None:
        unknown = set(pathology_logits) - set(XRV_LABELS)
        if unknown:
            raise ValueError(f"unknown labels {sorted(unknown)}")
        with torch.no_grad():
            dense.classifier.weight.zero_()
            dense.classifier.bias.copy_(torch.tensor([pathology_logits.get(n, -10.0) for n in XRV_LABELS]))
    torch.save(dense, folder / PATHOLOGY_WEIGHTS[pathology].filename)

    net = race_resnet34().eval()
    if race is not None:
        head = net.fc[0]  # type: ignore[index]
        assert isinstance(head, nn.Linear)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.tensor([10.0 if n == race else 0.0 for n in RACE_LABELS]))
    torch.save(nn.DataParallel(net).state_dict(), folder / RACE_FILE)

    torch.jit.script(_BrightnessAge().eval()).save(str(folder / AGE_FILE))
    return folder
