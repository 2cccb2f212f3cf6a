"""Which image side holds the patient's left: from DICOM orientation, never guessed from pixels.

PatientOrientation (0020,0020) gives the patient direction of the rows (left -> right along a row) and
of the columns (top -> bottom). "L\\F" is the standard PA/AP display: moving right along a row goes
toward the patient's Left, so patient left is on the image's right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from editor.types import SourceImage

PatientSide = Literal["left", "right"]
ImageSide = Literal["image_left", "image_right"]

_FRONTAL_VIEWS = {"PA", "AP"}
_LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"}


@dataclass(frozen=True)
class Orientation:
    patient_left_on_image_right: bool
    patient_head_on_image_top: bool
    provenance: str
    # False for lateral views (rows run anterior/posterior): left/right cannot be placed on the image.
    laterality_known: bool = True

    @classmethod
    def standard(cls, provenance: str) -> Orientation:
        return cls(True, True, provenance)

    @classmethod
    def from_source(cls, src: SourceImage) -> Orientation:
        return cls.from_attributes(src.patient_orientation, src.view_position)

    @classmethod
    def from_attributes(cls, patient_orientation: tuple[str, str] | None,
                        view_position: str | None) -> Orientation:
        parsed = _from_patient_orientation(patient_orientation)
        if parsed is not None:
            return parsed
        view = (view_position or "").strip().upper()
        if view in _FRONTAL_VIEWS:
            return cls.standard(f"ViewPosition {view}: standard frontal display (patient left on image right)")
        if view in _LATERAL_VIEWS:
            return cls(True, True, f"ViewPosition {view}: lateral view, left/right not separable on the image",
                       laterality_known=False)
        return cls.standard("assumed standard PA/AP display: no PatientOrientation/ViewPosition")

    def image_side(self, patient_side: PatientSide) -> ImageSide:
        on_right = self.patient_left_on_image_right == (patient_side == "left")
        return "image_right" if on_right else "image_left"


def _from_patient_orientation(value: tuple[str, str] | None) -> Orientation | None:
    """Orientation from (row direction, column direction), or None when absent or unusable."""
    if value is None or len(value) != 2:
        return None
    row, col = (str(v).strip().upper() for v in value)
    if not row or not col:
        return None
    text = f"PatientOrientation {row}\\{col}"
    head_top = "H" not in col  # column direction toward the Head means the feet are on top
    if "L" in row and "R" not in row:
        return Orientation(True, head_top, f"{text}: patient left on image right")
    if "R" in row and "L" not in row:
        return Orientation(False, head_top, f"{text}: patient left on image left (flipped)")
    if row[:1] in ("A", "P"):
        return Orientation(True, head_top, f"{text}: lateral view, left/right not separable on the image",
                           laterality_known=False)
    return None
