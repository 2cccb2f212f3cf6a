"""The region prior: where an instruction's findings may appear on this image (ARCHITECTURE.md §3.4).

prior = union over the instruction's findings of (finding -> anatomical regions, from the table in
editor/vocabulary.py) on this image's anatomy (editor/anatomy/), narrowed by location words:
  * left / right are the *patient's* sides, placed on the image through `Orientation` (DICOM
    PatientOrientation / ViewPosition) — never guessed from pixels; bilateral / none = both sides;
  * upper / middle / lower / base / apical / lateral / retrocardiac / perihilar / pericardial / pleural /
    rib intersect the finding's regions with that zone (or, when the two do not overlap, use the zone
    and say so).
Every finding has a region rule (editor/vocabulary.py); the few without a typical place use the broad
field (lungs, heart, mediastinum), recorded in `broad_field` and the notes. "Remove" uses the finding's
remove rule: where the finding *is* on the image that shows it -- the anatomy is segmented on that
image, so fluid or collapse hides part of the lung, and the rule widens the lung to the hemithorax.
A finding whose regions are empty on this image falls back to lungs + heart, and the prior's source
becomes "fallback" with a note naming the finding. Edges are soft (a small dilation + Gaussian)
but the prior is exactly 0 a short distance outside the regions.

Sources: "anatomy" (per image, above), "paper" (the research release's fixed 512x512
`pseudo_mask_<Finding>.npy` files, resized to the image; location words are not applied, as in the
paper), "none" (all ones, recorded as such).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from editor.anatomy import IMAGE_SIDES, Anatomy, Segmenter, dilate, erode, get_segmenter
from editor.instructions import FindingSpec, ParsedInstruction
from editor.orientation import Orientation
from editor.vocabulary import FINDINGS, FindingInfo

__all__ = ["SIDED_REGIONS", "RegionPrior", "build_prior", "paper_mask_path", "region_mask"]

PriorSource = Literal["anatomy", "paper", "fallback", "none"]

SIDED_REGIONS = frozenset({"lung", "upper_zone", "middle_zone", "lower_zone", "cp_angle", "apex", "hilum",
                           "perihilar", "lateral_margin", "chest_wall", "subdiaphragm", "base_behind_heart",
                           "hemithorax"})
ZONE_REGIONS: dict[str, tuple[str, ...]] = {
    "upper": ("upper_zone",),
    "middle": ("middle_zone",),
    "lower": ("lower_zone", "cp_angle"),
    "base": ("lower_zone", "cp_angle"),
    "apical": ("apex",),
    "retrocardiac": ("retrocardiac",),
    "perihilar": ("perihilar",),
    "lateral": ("lateral_margin",),
    "pericardial": ("heart_border",),
    "pleural": ("lateral_margin", "cp_angle", "apex"),
    "rib": ("chest_wall",),
}
FALLBACK_REGIONS = ("lung", "heart")
# A large collection reaches beyond its usual regions (an effusion climbs into the middle zone).
LARGE_SEVERITIES = frozenset({"large", "massive", "severe"})
LARGE_EXTENSION: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("middle_zone",),
    "pneumothorax": ("middle_zone",),
    "hydropneumothorax": ("middle_zone",),
}


@dataclass
class RegionPrior:
    mask: np.ndarray  # float32 [0, 1] on the given grid; max over per_finding
    per_finding: dict[str, np.ndarray]  # canonical finding -> float32 prior
    source: PriorSource
    regions: list[str]
    notes: list[str]
    laterality: str
    anatomy_quality: dict[str, Any] = field(default_factory=dict)
    broad_field: list[str] = field(default_factory=list)  # findings whose rule is the broad field


def _size(shape: tuple[int, ...]) -> int:
    return int(max(shape))


def region_mask(anatomy: Anatomy, region: str, image_side: str | None, orientation: Orientation) -> np.ndarray:
    """Boolean mask of one named region; `image_side` only for SIDED_REGIONS ("image_left"/"image_right")."""
    m = anatomy.masks
    size = _size(anatomy.shape)
    if region in SIDED_REGIONS:
        if image_side not in IMAGE_SIDES:
            raise ValueError(f"region {region!r} needs an image side, got {image_side!r}")
        lung = m[f"lung_{image_side}"]
        if region == "lung":
            return lung.copy()
        if region in ("upper_zone", "middle_zone", "lower_zone"):
            return m[f"{region.split('_')[0]}_{image_side}"].copy()
        if region == "cp_angle":  # fluid fills the angle beyond the dark lung's outline
            return dilate(m[f"cp_angle_{image_side}"], 0.03 * size)
        if region in ("apex", "hilum", "lateral_margin", "hemithorax"):
            return m[f"{region}_{image_side}"].copy()
        if region == "perihilar":
            hilum = m[f"hilum_{image_side}"]
            return dilate(hilum, 0.06 * size) & (lung | hilum)
        if region == "chest_wall":
            return _lateral_ring(lung, image_side, 0.05 * size)
        if region == "subdiaphragm":  # under this side's lung and its half of the heart
            return _base_band(lung | _heart_half(anatomy, image_side, 0.04), 0.05 * size)
        if region == "base_behind_heart":
            lower_top = np.flatnonzero(m[f"lower_{image_side}"].any(axis=1))
            out = _heart_half(anatomy, image_side, 0.04)
            if lower_top.size:
                out[: lower_top[0]] = False
            return out
    heart = m["heart"]
    if region == "heart":
        return heart.copy()
    if region == "heart_border":  # wide enough outward for an enlarging silhouette
        return dilate(heart, 0.07 * size) & ~erode(heart, 0.03 * size)
    if region == "mediastinum":
        return m["mediastinum"].copy()
    if region == "retrocardiac":
        return _retrocardiac(anatomy, orientation)
    if region == "spine":
        h, w = heart.shape
        lungs = anatomy.lungs()
        rows = np.flatnonzero(lungs.any(axis=1))
        mid = float(anatomy.quality.get("midline_x", 0.5)) * w
        out = np.zeros((h, w), bool)
        if rows.size:
            out[rows[0]: rows[-1] + 1, max(0, int(mid - 0.04 * w)): int(mid + 0.04 * w) + 1] = True
        return out
    raise ValueError(f"unknown region {region!r}")


def _heart_half(anatomy: Anatomy, image_side: str, spine_margin: float = 0.0) -> np.ndarray:
    """The part of the heart silhouette on one side of the body midline (optionally leaving out a
    band of `spine_margin` x width on each side of it: the spine is no pleural space)."""
    heart = anatomy.masks["heart"]
    w = heart.shape[1]
    centre = float(anatomy.quality.get("midline_x", 0.5)) * w
    cc = np.arange(w)[None, :]
    gap = spine_margin * w
    return heart & ((cc >= centre + gap) if image_side == "image_right" else (cc <= centre - gap))


def _lateral_ring(lung: np.ndarray, image_side: str, width: float) -> np.ndarray:
    """Band just outside the lung on its lateral side (ribs / soft tissue of the chest wall)."""
    ring = dilate(lung, width) & ~lung
    cols = np.flatnonzero(lung.any(axis=0))
    if cols.size == 0:
        return ring
    centre = (cols[0] + cols[-1]) / 2
    cc = np.arange(lung.shape[1])[None, :]
    return ring & ((cc < centre) if image_side == "image_left" else (cc > centre))


def _base_band(lung: np.ndarray, half_height: float) -> np.ndarray:
    """Band around the hemidiaphragm: within `half_height` rows of the lung's lowest pixel, per column --
    only in columns whose lowest pixel lies in the lung's lower part (the diaphragm). A column that ends
    higher is the lateral chest wall or the apex's side; the band must not climb it."""
    h, w = lung.shape
    out = np.zeros((h, w), bool)
    has = lung.any(axis=0)
    if not has.any():
        return out
    lowest = np.where(has, h - 1 - np.argmax(lung[::-1], axis=0), -1)
    rows = np.flatnonzero(lung.any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1])
    has &= lowest >= bottom - 0.25 * (bottom - top + 1)
    rr = np.arange(h)[:, None]
    out[:, has] = (np.abs(rr - lowest[None, :]) <= half_height)[:, has]
    return out


def _retrocardiac(anatomy: Anatomy, orientation: Orientation) -> np.ndarray:
    """Behind the heart: its half on the patient's left plus the adjacent left lower lung."""
    heart = anatomy.masks["heart"]
    size = _size(heart.shape)
    sides = [orientation.image_side("left")] if orientation.laterality_known else list(IMAGE_SIDES)
    out = np.zeros_like(heart)
    near_heart = dilate(heart, 0.04 * size)
    for side in sides:
        out |= _heart_half(anatomy, side) | (anatomy.masks[f"lower_{side}"] & near_heart)
    return out


def _soften(mask: np.ndarray) -> np.ndarray:
    """Soft edge: grow by ~1.5 % of the image, blur; 1 inside the region, exactly 0 well outside it."""
    size = _size(mask.shape)
    sigma = max(0.01 * size, 0.5)
    soft = ndi.gaussian_filter(dilate(mask, 1.5 * sigma).astype(np.float32), sigma)
    soft = np.maximum(soft, mask.astype(np.float32))
    soft[soft < 0.02] = 0.0
    return np.clip(soft, 0.0, 1.0).astype(np.float32)


def _image_sides(spec: FindingSpec, orientation: Orientation, notes: list[str]) -> list[str]:
    named = [s for s in ("left", "right") if s in spec.location]
    if not named:
        return list(IMAGE_SIDES)
    if not orientation.laterality_known:
        notes.append(f"{spec.name}: side '{named[0]}' cannot be placed on this image "
                     f"({orientation.provenance}); used both sides")
        return list(IMAGE_SIDES)
    return [orientation.image_side(s) for s in named]  # type: ignore[arg-type]


def _union(anatomy: Anatomy, regions: tuple[str, ...], sides: list[str], orientation: Orientation) -> np.ndarray:
    out = np.zeros(anatomy.shape, bool)
    for region in regions:
        if region in SIDED_REGIONS:
            for side in sides:
                out |= region_mask(anatomy, region, side, orientation)
        else:
            out |= region_mask(anatomy, region, None, orientation)
    return out


def _level_words(level: str) -> list[str]:
    """'moderate to large' / 'mild-to-moderate' -> its single level words."""
    return [w for w in re.split(r"[\s\-]+", level) if w and w != "to"]


def _anatomy_finding(anatomy: Anatomy, spec: FindingSpec, info: FindingInfo, orientation: Orientation,
                     notes: list[str], level_to: str | None = None,
                     operation: str = "add") -> tuple[np.ndarray | None, str]:
    """Boolean prior of one finding (None = no usable table entry) and a description of it."""
    regions = info.regions_for(operation)
    if not regions:
        return None, f"{spec.name}: no region table entry"
    sides = _image_sides(spec, orientation, notes)
    levels = {spec.severity or "", level_to or ""}
    if any(word in LARGE_SEVERITIES for level in levels for word in _level_words(level)):
        regions = regions + LARGE_EXTENSION.get(spec.name, ())
    base = _union(anatomy, regions, sides, orientation)
    described = f"{spec.name}: {', '.join(regions)} on {', '.join(sides)}"
    if info.broad:
        described += " (broad field: no specific region rule)"
    if operation == "remove" and regions != info.regions:
        described += " (remove: where the finding is, the hemithorax the diseased lung hides)"
    zones = [z for z in spec.location if z in ZONE_REGIONS]
    if zones and base.any():
        zone_regions = tuple(dict.fromkeys(r for z in zones for r in ZONE_REGIONS[z]))
        zone = _union(anatomy, zone_regions, sides, orientation)
        size = _size(anatomy.shape)
        # The finding's regions near the place, plus the place itself where it touches them (e.g. the
        # retrocardiac region is largely the heart's shadow, outside the lung field).
        narrowed = (base & dilate(zone, 0.03 * size)) | (zone & dilate(base, 0.05 * size))
        if narrowed.sum() >= 0.2 * max(int(zone.sum()), 1):
            base = narrowed
            described += f", narrowed to {' '.join(zones)}"
        else:
            base = zone
            described += f"; location {' '.join(zones)} lies outside its usual regions: used the location"
            notes.append(f"{spec.name}: location '{' '.join(zones)}' is outside the finding's usual regions; "
                         f"used the location's regions")
    if not base.any():
        return None, f"{spec.name}: regions {', '.join(regions)} are empty on this image"
    return base, described


def paper_mask_path(paper_dir: str | Path, info: FindingInfo) -> Path:
    return Path(paper_dir) / f"pseudo_mask_{info.paper_mask_name}.npy"


def _load_paper_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    arr = np.load(path, allow_pickle=False).astype(np.float32)
    if arr.ndim == 3:  # (H, W, 1) or (1, H, W)
        arr = arr.squeeze()
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D mask, got shape {arr.shape}")
    if arr.max() > 1.0:  # masks saved as 0/255
        arr = arr / float(arr.max())
    resized = np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def _laterality_text(parsed: ParsedInstruction, orientation: Orientation) -> str:
    placed = []
    for spec in parsed.findings:
        for side in ("left", "right"):
            if side in spec.location:
                where = orientation.image_side(side) if orientation.laterality_known else "both image sides"
                placed.append(f"{spec.name}: patient {side} -> {where}")
        if "bilateral" in spec.location:
            placed.append(f"{spec.name}: bilateral -> both image sides")
    head = "; ".join(placed) if placed else "no side given: both image sides"
    return f"{head} ({orientation.provenance})"


def build_prior(
    image01: np.ndarray,
    parsed: ParsedInstruction,
    orientation: Orientation,
    *,
    source: Literal["anatomy", "paper", "none"] = "anatomy",
    paper_dir: str | Path | None = None,
    segmenter: Segmenter | None = None,
) -> RegionPrior:
    """Region prior for `parsed` on `image01` (Preprocessed.model_image: model grid, bone bright)."""
    image = np.asarray(image01, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    shape = (int(image.shape[0]), int(image.shape[1]))
    laterality = _laterality_text(parsed, orientation)
    if source == "none":
        ones = np.ones(shape, np.float32)
        return RegionPrior(ones, {n: ones for n in parsed.finding_names}, "none", ["whole image"],
                           ["region prior disabled (prior='none'): the whole image may be edited"], laterality)
    if source not in ("anatomy", "paper"):
        raise ValueError(f"unknown prior source {source!r}")
    if source == "paper" and paper_dir is None:
        raise ValueError("prior='paper' needs paper_dir (a folder of pseudo_mask_<Finding>.npy files)")

    notes: list[str] = []
    regions: list[str] = []
    anatomy: Anatomy | None = None
    # Everything below works head-up (zones, bases, paper masks); a feet-up image is flipped in and
    # the finished prior flipped back.
    head_up = orientation.patient_head_on_image_top
    work = image if head_up else np.flipud(image).copy()
    if not head_up:
        notes.append("image is feet-up (PatientOrientation): prior built on the flipped image, flipped back")

    def get_anatomy() -> Anatomy:
        nonlocal anatomy
        if anatomy is None:
            seg = segmenter or get_segmenter()
            anatomy = seg.segment(work)
            q = anatomy.quality
            notes.append(f"anatomy: {q.get('method', '?')} ({q.get('segmenter', getattr(seg, 'name', '?'))})")
            notes.extend(str(n) for n in q.get("notes", []))
        return anatomy

    per_finding: dict[str, np.ndarray] = {}
    broad: list[str] = []
    fell_back = False
    for spec in parsed.findings:
        info = FINDINGS[spec.name]
        soft: np.ndarray | None = None
        if source == "paper":
            assert paper_dir is not None
            path = paper_mask_path(paper_dir, info)
            if path.is_file():
                soft = _load_paper_mask(path, shape)
                regions.append(f"{spec.name}: paper mask {path.name}")
                if spec.location:
                    notes.append(f"{spec.name}: location '{' '.join(spec.location)}' not applied to the paper mask")
            else:
                notes.append(f"{spec.name}: no paper mask {path.name} in {paper_dir}")
        if soft is None and source == "anatomy":
            binary, described = _anatomy_finding(get_anatomy(), spec, info, orientation, notes,
                                                 parsed.level_to, parsed.operation)
            if binary is not None:
                soft = _soften(binary)
                regions.append(described)
                if info.broad and spec.name not in broad:
                    broad.append(spec.name)
                    notes.append(f"{spec.name}: no typical place on a frontal radiograph; used the broad field "
                                 f"({', '.join(info.regions)})")
            else:
                notes.append(described)
        if soft is None:  # fallback: the whole lung and heart field, recorded
            fell_back = True
            anat = get_anatomy()
            soft = _soften(anat.lungs() | anat.masks["heart"])
            regions.append(f"{spec.name}: fallback lungs + heart")
            notes.append(f"{spec.name}: fell back to lungs + heart")
        previous = per_finding.get(spec.name)
        per_finding[spec.name] = soft if previous is None else np.maximum(previous, soft)

    if not head_up:
        per_finding = {k: np.flipud(v).copy() for k, v in per_finding.items()}
    mask = np.maximum.reduce(list(per_finding.values())).astype(np.float32)
    final: PriorSource = "fallback" if fell_back else source
    return RegionPrior(mask, per_finding, final, regions, notes, laterality,
                       dict(anatomy.quality) if anatomy is not None else {}, broad)
