"""Geometry of the objects the node writes on a source's pixel grid: valid spacing, Patient Orientation,
and the plane geometry (Frame of Reference, Pixel Measures, Plane Orientation / Position) that the two
Segmentations and the Parametric Map of one job share.

Viewers need that geometry: OHIF 3.x reads the SEG's shared Pixel Measures and Plane Orientation and fails
without them, and the Parametric Map IOD requires them. A CR/DX has no patient-based Frame of Reference, so
the derived objects get ONE new frame for the detector plane (UID derived from the job key, the same in
the SEGs and the PM), origin at the centre of the top-left pixel:

- orientation: the source's Image Orientation (Patient) where it has one, else the image plane
  1\\0\\0\\0\\1\\0. That is the plane viewers put a projection image without orientation on
  (cornerstone3D / OHIF): a SEG on any other plane, e.g. the anatomical 1\\0\\0\\0\\0\\-1 that Patient
  Orientation L\\F implies, is refused there as "orthogonal to the acquisition plane" (measured with
  OHIF 3.13.2). The anatomy stays in Patient Orientation, which the SCs and SEGs carry.
- spacing, in order: a valid Pixel Spacing (the source's own); else Imager Pixel Spacing divided by
  Estimated Radiographic Magnification Factor where that is present (the estimated spacing in the plane
  of the patient), else Imager Pixel Spacing as it is (detector plane); else a NOMINAL 1 mm, said so in
  the objects' Derivation Description. An invalid spacing (the chest CR's 0\\0) is never copied.

This frame is NOT the source's (the source has none): it only says "same pixel grid as the source, in the
detector plane". Where the source carries real geometry (Frame of Reference UID + Image Position /
Orientation (Patient) + valid Pixel Spacing) the objects use the source's frame and geometry instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset

# Patient-based direction letters (PS3.3 C.7.6.1.1.1).
_DIRECTION_LETTERS = frozenset("LRPAHF")
NOMINAL_SPACING_MM = 1.0
# Rows along +x, columns along +y: where cornerstone3D (OHIF) places an image without Image Orientation
# (Patient). A SEG on any other plane is refused there as "orthogonal to the acquisition plane".
IMAGE_PLANE_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _positive(value: Any) -> float | None:
    """A finite number > 0, else None (a sender's DS can say 0, -1, NaN or inf)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def valid_spacing(value: Any) -> tuple[float, float] | None:
    """A two-valued spacing with both values finite and > 0, else None (the chest CR carries 0\\0)."""
    try:
        row, col = (_positive(v) for v in value)
    except (TypeError, ValueError):  # not two values
        return None
    return (row, col) if row is not None and col is not None else None


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """(row direction, column direction) if Patient Orientation is present and made of known letters."""
    value = ds.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, col = str(value[0]).strip().upper(), str(value[1]).strip().upper()
    if not row or not col or any(ch not in _DIRECTION_LETTERS for ch in row + col):
        return None
    return (row, col)


def _letters(vector: tuple[float, float, float]) -> str:
    """Patient-orientation letters of a direction cosine, most significant first (C.7.6.1.1.1)."""
    names = (("L", "R"), ("P", "A"), ("H", "F"))
    order = sorted(range(3), key=lambda i: -abs(vector[i]))
    return "".join(names[i][0 if vector[i] > 0 else 1] for i in order if abs(vector[i]) > 1e-3)


def orientation_labels(ds: Dataset) -> tuple[str, str] | None:
    """Patient Orientation, else derived from Image Orientation (Patient); None when neither exists
    (then the objects carry an empty Patient Orientation: unknown, never guessed)."""
    labels = patient_orientation(ds)
    if labels is not None:
        return labels
    iop = ds.get("ImageOrientationPatient")
    try:
        row = tuple(float(v) for v in iop[:3])  # type: ignore[index]
        col = tuple(float(v) for v in iop[3:6])  # type: ignore[index]
    except (TypeError, ValueError):
        return None
    row_letters, col_letters = _letters(row), _letters(col)  # type: ignore[arg-type]
    return (row_letters, col_letters) if row_letters and col_letters else None


# Deepest sequence nesting copied from a source into the outputs. pydicom writes nested sequences
# recursively and on an error re-wraps the exception with the whole traceback at every level (the
# message grows ~2.6x per level: 10 levels ~40 MB, 14 levels several GB). A chest radiograph nests 3-4
# levels; anything deeper than this is refused rather than copied.
COPY_DEPTH_LIMIT = 8


def check_copy_depth(source: Dataset, limit: int = COPY_DEPTH_LIMIT) -> None:
    """ValueError when `source` nests sequences deeper than `limit` (walked iteratively)."""
    todo: list[tuple[Dataset, int]] = [(source, 0)]
    while todo:
        ds, level = todo.pop()
        for raw in ds.elements():
            if getattr(raw, "VR", None) not in ("SQ", None, "UN"):
                continue
            elem = ds[raw.tag]  # converts a raw element; a sequence's items become Datasets
            if elem.VR != "SQ" or not elem.value:
                continue
            if level + 1 > limit:
                raise ValueError(f"the source nests sequences more than {limit} deep ({elem.keyword or elem.tag}); "
                                 "its elements are not copied into outputs")
            todo.extend((item, level + 1) for item in elem.value)


def metadata_copy(source: Dataset) -> Dataset:
    """The source without pixel data and without an invalid (Imager) Pixel Spacing (highdicom would copy it).
    Refuses (ValueError) a source nested deeper than COPY_DEPTH_LIMIT."""
    check_copy_depth(source)
    out = Dataset()
    for elem in source:
        if elem.tag == 0x7FE00010 or elem.tag.group == 0xFFFC:
            continue
        out.add(elem)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in out and valid_spacing(out[keyword].value) is None:
            del out[keyword]
    return out


def image_orientation(ds: Dataset) -> tuple[float, ...] | None:
    """Image Orientation (Patient) as six floats if present and made of two orthogonal unit vectors."""
    try:
        values = tuple(float(v) for v in ds.get("ImageOrientationPatient"))  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(values) != 6:
        return None
    row, col = values[:3], values[3:]
    unit = all(abs(sum(v * v for v in vec) - 1.0) < 1e-3 for vec in (row, col))
    orthogonal = abs(sum(a * b for a, b in zip(row, col, strict=True))) < 1e-3
    return values if unit and orthogonal else None


def pixel_spacing(source: Dataset) -> tuple[tuple[float, float], str, bool]:
    """(row spacing, column spacing) in mm, how it was found, and whether it is only NOMINAL."""
    spacing = valid_spacing(source.get("PixelSpacing"))
    if spacing is not None:
        return spacing, "spacing from Pixel Spacing", False
    imager = valid_spacing(source.get("ImagerPixelSpacing"))
    if imager is not None:
        magnification = _positive(source.get("EstimatedRadiographicMagnificationFactor"))
        if magnification is not None:
            corrected = (imager[0] / magnification, imager[1] / magnification)
            return corrected, (f"spacing from Imager Pixel Spacing / Estimated Radiographic Magnification "
                               f"Factor {magnification:g}"), False
        return imager, "spacing from Imager Pixel Spacing (detector plane, not magnification-corrected)", False
    return ((NOMINAL_SPACING_MM, NOMINAL_SPACING_MM),
            "NOMINAL 1 mm spacing: the source has no valid Pixel Spacing or Imager Pixel Spacing", True)


@dataclass(frozen=True)
class PlaneGeometry:
    frame_of_reference_uid: str
    pixel_measures: hd.PixelMeasuresSequence
    plane_orientation: hd.PlaneOrientationSequence
    plane_position: hd.PlanePositionSequence
    shares_source_frame: bool
    nominal_spacing: bool  # True: 1 mm assumed, no spacing in the source
    note: str  # how the geometry was derived; goes into the objects' Derivation Description

    @property
    def spacing(self) -> tuple[float, float]:
        row, col = (float(v) for v in self.pixel_measures[0].PixelSpacing)
        return row, col


def plane_geometry(source: Dataset, new_frame_uid: str) -> PlaneGeometry:
    """The one plane geometry of a job's SEGs and Parametric Map (see the module docstring)."""
    spacing = valid_spacing(source.get("PixelSpacing"))
    iop = source.get("ImageOrientationPatient")
    ipp = source.get("ImagePositionPatient")
    if "FrameOfReferenceUID" in source and spacing and iop is not None and ipp is not None:
        return PlaneGeometry(
            frame_of_reference_uid=str(source.FrameOfReferenceUID),
            pixel_measures=hd.PixelMeasuresSequence(
                pixel_spacing=spacing, slice_thickness=_positive(source.get("SliceThickness"))
            ),
            plane_orientation=hd.PlaneOrientationSequence("PATIENT", [float(v) for v in iop]),
            plane_position=hd.PlanePositionSequence("PATIENT", [float(v) for v in ipp]),
            shares_source_frame=True,
            nominal_spacing=False,
            note="geometry and Frame of Reference of the source",
        )

    notes = []
    orientation = image_orientation(source)
    if orientation is not None:
        notes.append("orientation from the source's Image Orientation (Patient)")
    else:
        orientation = IMAGE_PLANE_ORIENTATION
        labels = orientation_labels(source)
        anatomy = f"Patient Orientation {labels[0]}\\{labels[1]}" if labels else "no Patient Orientation"
        notes.append("image-plane orientation 1\\0\\0\\0\\1\\0 (the plane viewers put a projection image without "
                     f"Image Orientation (Patient) on; anatomy: {anatomy})")
    spacing, how, nominal = pixel_spacing(source)
    notes.append(how)
    return PlaneGeometry(
        frame_of_reference_uid=new_frame_uid,
        # one plane: a nominal 1 mm thickness satisfies the macro and claims no depth information
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=1.0,
                                                spacing_between_slices=1.0),
        plane_orientation=hd.PlaneOrientationSequence("PATIENT", list(orientation)),
        plane_position=hd.PlanePositionSequence("PATIENT", [0.0, 0.0, 0.0]),
        shares_source_frame=False,
        nominal_spacing=nominal,
        note="new detector-plane Frame of Reference, NOT shared with the source; " + "; ".join(notes),
    )


def geometry_reference(source: Dataset, geometry: PlaneGeometry) -> Dataset:
    """A metadata copy of the source that carries `geometry`, for highdicom's `source_images`.

    highdicom takes the Frame of Reference (and so the coordinate system) of a SEG or Parametric Map from
    its source images and derives Pixel Measures / Plane Orientation / Plane Positions from them: handing it
    this copy gives every derived object of the job the same, viewer-usable geometry. The references to the
    source instance (SOP Class / Instance UID) are the source's own.
    """
    ref = metadata_copy(source)
    ref.FrameOfReferenceUID = geometry.frame_of_reference_uid
    ref.ImagePositionPatient = list(geometry.plane_position[0].ImagePositionPatient)
    ref.ImageOrientationPatient = list(geometry.plane_orientation[0].ImageOrientationPatient)
    ref.PixelSpacing = list(geometry.pixel_measures[0].PixelSpacing)
    ref.SliceThickness = geometry.pixel_measures[0].get("SliceThickness", 1.0)
    if not geometry.shares_source_frame:
        ref.PositionReferenceIndicator = ""  # Type 2: a detector-plane frame has no anatomical reference
    return ref
