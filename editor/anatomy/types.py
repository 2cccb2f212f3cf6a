"""What a segmenter returns (`Anatomy`: named boolean masks on the image's grid, plus quality notes),
the `Segmenter` protocol, and the image-side names the masks are keyed by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

IMAGE_SIDES = ("image_left", "image_right")


@dataclass
class Anatomy:
    masks: dict[str, np.ndarray]  # bool masks on the image's grid, keyed by image-side names
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return next(iter(self.masks.values())).shape  # type: ignore[return-value]

    def lungs(self) -> np.ndarray:
        return self.masks["lung_image_left"] | self.masks["lung_image_right"]

    def flipud(self) -> Anatomy:
        """The same anatomy for the vertically flipped image (feet-up acquisitions)."""
        return Anatomy({k: np.flipud(v).copy() for k, v in self.masks.items()}, dict(self.quality))


class Segmenter(Protocol):
    name: str

    def segment(self, image01: np.ndarray) -> Anatomy: ...
