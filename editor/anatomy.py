"""Per-image chest anatomy without downloaded weights: lung fields, zones, angles, apices, hila, heart.

`ClassicalSegmenter` works on the display image (bone bright, [0, 1]) of a frontal chest radiograph
drawn head-up:
  1. contrast-stretch and smooth; Otsu threshold -> dark regions (air: lungs and outside the body);
  2. dark components that mostly lie in the image's outer frame are outside air; thin bridges from a
     lung to the frame (neck, axillae) are cut by a morphological opening;
  3. the largest dark component on each side of the image centre is that side's lung; each becomes its
     filled convex hull (lungs overlap heart and opacities in projection, which thresholds miss);
  4. the base is moved down to the diaphragm, found per lung as the last rise of the column-averaged
     intensity profile to the sub-diaphragmatic level (dense lower lungs stop a threshold early);
  5. the heart is the dense lower region between the lung fields' medial edges (the cardiac borders,
     followed row by row down to the diaphragm, so the apex is inside), with a rounded top;
  6. zones are vertical thirds of each lung; apex = top fifth; costophrenic angle = lower-lateral
     corner; hilum = medial middle; lateral margin = the lateral band of each row; hemithorax = the
     thoracic cavity on that side (the lung widened to the chest wall and down to the diaphragm, for
     findings that hide aerated lung).
Images smaller than the working size are enlarged to it first (the rules are tuned there). When only
one lung is found it is mirrored about the midline; when none is plausible a geometric
template of a standard PA chest, scaled to the body's bounding box, is used instead. Either way
`quality["method"]` and `quality["notes"]` say so.

Masks are keyed by *image* sides (the segmenter does not know the patient's orientation;
editor/regions.py maps patient sides through `Orientation`). A learned segmenter with local weights
can replace this one: implement `Segmenter` and register it with `register_segmenter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

__all__ = [
    "IMAGE_SIDES",
    "Anatomy",
    "ClassicalSegmenter",
    "Segmenter",
    "get_segmenter",
    "register_segmenter",
    "template_anatomy",
]

IMAGE_SIDES = ("image_left", "image_right")
WORK_SIZE = 256  # segment at most this many pixels along the longer side (speed; shapes are coarse)


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


# ----------------------------------------------------------------------------------------- helpers


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    return float(centres[int(np.nanargmax(between))])


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a disk, via the distance transform (fast for large radii)."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    return np.asarray(ndi.distance_transform_edt(~mask) <= radius)


def erode(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    padded = np.pad(mask, 1, constant_values=False)  # the image border counts as outside
    return np.asarray(ndi.distance_transform_edt(padded) > radius)[1:-1, 1:-1]


def _filled_hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a boolean mask (the mask itself when the hull is degenerate)."""
    from PIL import Image, ImageDraw

    pts = np.argwhere(mask)
    if len(pts) < 4:
        return mask.copy()
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return mask.copy()
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([(float(c), float(r)) for r, c in pts[hull.vertices]], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask


def _rows_cols(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _stretch_down(mask: np.ndarray, new_bottom: int) -> np.ndarray:
    """Resample a mask vertically so that its bottom row moves to `new_bottom` (top fixed)."""
    top, bottom, _, _ = _rows_cols(mask)
    if new_bottom <= bottom:
        return mask
    src_rows = top + (np.arange(top, new_bottom + 1) - top) * (bottom - top) / max(new_bottom - top, 1)
    out = np.zeros_like(mask)
    out[top: new_bottom + 1] = mask[np.clip(np.rint(src_rows).astype(int), top, bottom)]
    return out


# ------------------------------------------------------------------------------- derived regions


def _zones_and_parts(lung: np.ndarray, side: str, midline: float, masks: dict[str, np.ndarray]) -> None:
    """Zones, apex, costophrenic angle, hilum and lateral margin of one lung (in place into masks)."""
    h, w = lung.shape
    rr, cc = np.mgrid[0:h, 0:w]
    top, bottom, left, right = _rows_cols(lung)
    height = max(bottom - top + 1, 1)
    width = max(right - left + 1, 1)
    thirds = [top + height * k / 3.0 for k in range(4)]
    for name, (a, b) in zip(("upper", "middle", "lower"), zip(thirds[:-1], thirds[1:], strict=True),
                            strict=True):
        masks[f"{name}_{side}"] = lung & (rr >= a) & (rr < b + (1 if name == "lower" else 0))
    masks[f"apex_{side}"] = lung & (rr < top + 0.3 * height)
    lateral_is_left = side == "image_left"
    medial_x = right if lateral_is_left else left
    lateral_half = (cc <= left + width / 2) if lateral_is_left else (cc >= right - width / 2)
    masks[f"cp_angle_{side}"] = lung & (rr >= bottom - 0.22 * height) & lateral_half
    # The hilum sits at the medial border, mid-height; it is partly outside the dark lung, so the box
    # reaches a little beyond the lung toward the midline.
    medial_band = np.abs(cc - medial_x) <= 0.35 * width
    toward_mid = (cc <= medial_x + 0.1 * width) if lateral_is_left else (cc >= medial_x - 0.1 * width)
    masks[f"hilum_{side}"] = ((rr >= top + 0.3 * height) & (rr <= top + 0.6 * height) & medial_band
                              & toward_mid & (np.abs(cc - midline) > 0.02 * w))
    # Lateral margin: in every row, the lateral 25 % of that row's lung width (>= 2 px).
    margin = np.zeros_like(lung)
    for r in range(top, bottom + 1):
        xs = np.flatnonzero(lung[r])
        if xs.size == 0:
            continue
        band = max(2, int(round(0.25 * (xs[-1] - xs[0] + 1))))
        if lateral_is_left:
            margin[r, xs[0]: xs[0] + band] = True
        else:
            margin[r, max(xs[-1] - band + 1, 0): xs[-1] + 1] = True
    masks[f"lateral_margin_{side}"] = margin & lung


def _hemithorax_floor(lungs: dict[str, np.ndarray], bottoms: dict[str, int]) -> int:
    """Lowest row either hemithorax reaches: the lower lung base, and no higher than 0.85 thorax widths
    below the apices (both bases can sit high over fluid; lungs are about as tall as the thorax is wide)."""
    h = lungs["image_left"].shape[0]
    both = lungs["image_left"] | lungs["image_right"]
    top, _, left, right = _rows_cols(both)
    expected = top + 0.85 * (right - left + 1)
    return int(min(h - 1, max(max(bottoms.values()), expected)))


def _hemithorax(lung: np.ndarray, side: str, floor: int, midline: float) -> np.ndarray:
    """One side's thoracic cavity as the chest wall, the mediastinum and the diaphragm bound it.

    On an image that *shows* fluid or collapse, the lung segmented from the dark (aerated) lung stops at
    the fluid; the hemithorax does not: the lung's lower third sets its lateral wall (the chest wall is
    widest at the base) and its medial edge, and the box between them reaches down to `floor`. Its
    filled convex hull with the lung is the hemithorax ("Remove the finding of pleural effusion" must
    cover where the fluid is)."""
    h, w = lung.shape
    if not lung.any():
        return lung.copy()
    top, bottom, _, _ = _rows_cols(lung)
    low = lung[int(top + 2 * (bottom - top) / 3): bottom + 1]
    cols = np.flatnonzero(low.any(axis=0))
    if cols.size == 0:
        return lung.copy()
    lateral_is_left = side == "image_left"
    lateral = int(cols[0] if lateral_is_left else cols[-1])
    # Medial edge at the base, but never across the body midline.
    edges = [np.flatnonzero(row)[-1 if lateral_is_left else 0] for row in low if row.any()]
    medial = float(np.median(edges))
    medial = min(medial, midline) if lateral_is_left else max(medial, midline)
    box = np.zeros_like(lung)
    c0, c1 = sorted((lateral, int(round(medial))))
    box[bottom: max(floor, bottom) + 1, c0: c1 + 1] = True
    return _filled_hull(lung | box)


def _medial_edges(left: np.ndarray, right: np.ndarray, rows: range) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the image-left lung's rightmost and the image-right lung's leftmost column (-1: none)."""
    h = left.shape[0]
    medial_l = np.full(h, -1)
    medial_r = np.full(h, -1)
    for r in rows:
        xl = np.flatnonzero(left[r])
        xr = np.flatnonzero(right[r])
        if xl.size and xr.size and xl[-1] < xr[0]:
            medial_l[r], medial_r[r] = xl[-1], xr[0]
    return medial_l, medial_r


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median over a window of rows (odd length, clipped at the ends): a border without vessel jitter."""
    if window <= 1 or values.size < 3:
        return values.astype(float)
    half = window // 2
    padded = np.pad(values.astype(float), half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def _lung_borders(raw: np.ndarray, medial_is_right: bool, rows: np.ndarray) -> np.ndarray:
    """Per row, the dark lung's medial column (the cardiac border where the heart touches it); below the
    lung's base the last border carries on down (the heart rests on the diaphragm there); -1 above it."""
    out = np.full(rows.size, -1.0)
    last = -1.0
    for i, r in enumerate(rows):
        xs = np.flatnonzero(raw[r])
        if xs.size:
            last = float(xs[-1] if medial_is_right else xs[0])
        out[i] = last
    return out


def _heart_and_mediastinum(lungs: dict[str, np.ndarray], raw: dict[str, np.ndarray],
                           bottoms: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mediastinum = between the lung fields; heart = the region between the dark lungs' medial edges
    (the cardiac borders) from where they part down to the diaphragm, with a rounded top.

    The borders are followed row by row rather than fitted with an ellipse: the heart is widest low
    down, where the apex (usually on the image right of a PA film, the patient's left) reaches out
    along the diaphragm; an ellipse centred on the silhouette misses it."""
    h, w = lungs["image_left"].shape
    top = min(_rows_cols(lungs[s])[0] for s in IMAGE_SIDES)
    bottom = max(bottoms.values())
    span = max(bottom - top + 1, 1)
    fl, fr = _medial_edges(lungs["image_left"], lungs["image_right"], range(top, bottom + 1))
    mediastinum = np.zeros((h, w), bool)
    for r in np.flatnonzero(fl >= 0):
        mediastinum[r, fl[r] + 1: fr[r]] = True
    # Cardiac borders from the dark lungs themselves (the filled fields overlap the heart). Kept
    # symmetric (no side preference): the segmenter does not know which side is the patient's left.
    el, er = _medial_edges(raw["image_left"], raw["image_right"], range(top, bottom + 1))
    valid = np.flatnonzero(el >= 0)
    gap = (er - el).astype(float)
    lungs_any = lungs["image_left"] | lungs["image_right"]
    _, _, outer_l, outer_r = _rows_cols(lungs_any)
    thorax = float(outer_r - outer_l + 1)
    mid = (outer_l + outer_r) / 2
    upper = valid[(valid >= top + 0.2 * span) & (valid < top + 0.45 * span)]
    lower = valid[(valid >= top + 0.45 * span) & (valid <= top + 0.92 * span)]
    rr, cc = np.mgrid[0:h, 0:w]
    heart_bottom = float(bottom)  # the heart rests on the diaphragm
    if lower.size < 3:
        # The lungs are never side by side low down (e.g. a large effusion): a typical heart, an ellipse.
        heart_top = top + 0.55 * span
        cx, rx = mid, 0.25 * thorax
        cy, ry = (heart_top + heart_bottom) / 2, max((heart_bottom - heart_top) / 2, 0.05 * h)
        heart = (((cc - cx) / rx) ** 2 + ((rr - cy) / ry) ** 2 <= 1.0) & (rr <= bottom)
        return heart, mediastinum | heart
    wide = lower[gap[lower] > 1.3 * float(np.median(gap[upper]))] if upper.size else lower
    heart_top = float(wide[0]) if wide.size >= 3 else top + 0.55 * span
    heart_top = min(max(heart_top, top + 0.45 * span), top + 0.7 * span)

    rows = np.arange(int(round(heart_top)), bottom + 1)
    window = max(3, int(0.04 * h) | 1)
    left = _running_median(_lung_borders(lungs["image_left"], True, rows), window)
    right = _running_median(_lung_borders(lungs["image_right"], False, rows), window)
    # Where a lung is missing from a row (e.g. above a mirrored lung's top), use the typical border.
    left = np.where(left < 0, mid - 0.2 * thorax, left)
    right = np.where(right < 0, mid + 0.2 * thorax, right)
    # A cardiac border runs steeply down to the diaphragm; a field's edge that swings outward faster
    # than 0.6 columns per row is the dome of the diaphragm under it, not the heart.
    for i in range(1, rows.size):
        left[i] = max(left[i], left[i - 1] - 0.6)
        right[i] = min(right[i], right[i - 1] + 0.6)
    # Cardiothoracic sanity: width 30-65 % of the thorax, centre within 15 % of the thorax's middle.
    centre = np.clip((left + right) / 2, mid - 0.15 * thorax, mid + 0.15 * thorax)
    half = np.clip((right - left) / 2, 0.15 * thorax, 0.325 * thorax)
    # Rounded top: over the upper quarter of the heart the width grows like a half ellipse.
    cap = max(0.25 * (heart_bottom - heart_top), 1.0)
    depth = np.clip((rows - heart_top) / cap, 0.0, 1.0)
    half = half * np.sqrt(1.0 - (1.0 - depth) ** 2)
    heart = np.zeros((h, w), bool)
    cols = np.arange(w)
    for i, r in enumerate(rows):
        heart[r] = np.abs(cols - centre[i]) <= half[i]
    mediastinum |= heart
    return heart, mediastinum


def _assemble(lungs: dict[str, np.ndarray], bottoms: dict[str, int], quality: dict[str, Any],
              raw: dict[str, np.ndarray] | None = None) -> Anatomy:
    h, w = lungs["image_left"].shape
    masks: dict[str, np.ndarray] = {f"lung_{s}": lungs[s] for s in IMAGE_SIDES}
    heart, mediastinum = _heart_and_mediastinum(lungs, raw or lungs, bottoms)
    # Body midline from the mediastinum above the heart (the heart itself lies off-centre).
    upper_mediastinum = mediastinum & ~dilate(heart, 2)
    cols = np.nonzero(upper_mediastinum)[1]
    midline = float(np.median(cols)) if cols.size else (w - 1) / 2
    for side in IMAGE_SIDES:
        _zones_and_parts(lungs[side], side, midline, masks)
    floor = _hemithorax_floor(lungs, bottoms)
    for side in IMAGE_SIDES:
        masks[f"hemithorax_{side}"] = _hemithorax(lungs[side], side, floor, midline)
    masks["heart"] = heart
    masks["mediastinum"] = mediastinum
    quality["midline_x"] = midline / w
    quality["lung_area_fraction"] = {s: float(lungs[s].mean()) for s in IMAGE_SIDES}
    quality["heart_area_fraction"] = float(heart.mean())
    return Anatomy(masks, quality)


# ------------------------------------------------------------------------------------- template


def template_anatomy(shape: tuple[int, int], body_box: tuple[int, int, int, int] | None = None,
                     *, reason: str = "") -> Anatomy:
    """A standard PA chest drawn into `body_box` (top, bottom, left, right) or the whole image."""
    h, w = shape
    top, bottom, left, right = body_box if body_box is not None else (0, h - 1, 0, w - 1)
    bh, bw = max(bottom - top + 1, 8), max(right - left + 1, 8)
    cx = left + bw / 2
    rr, cc = np.mgrid[0:h, 0:w]
    lung_top = top + 0.08 * bh
    lung_base = top + 0.78 * bh
    lungs: dict[str, np.ndarray] = {}
    for side, sign in (("image_left", -1.0), ("image_right", 1.0)):
        lx = cx + sign * 0.2 * bw
        ellipse = ((cc - lx) / (0.17 * bw)) ** 2 + ((rr - lung_base) / (lung_base - lung_top)) ** 2 <= 1.0
        dome = lung_base - 0.07 * bh * (1.0 - np.clip((cc - lx) / (0.17 * bw), -1, 1) ** 2)
        lungs[side] = ellipse & (rr <= dome)
    bottoms = {s: int(_rows_cols(lungs[s])[1]) for s in IMAGE_SIDES}
    notes = ["segmentation failed; used a geometric template of a standard PA chest" + (f": {reason}" if reason
                                                                                        else "")]
    return _assemble(lungs, bottoms, {"method": "template", "notes": notes,
                                      "body_box": [int(top), int(bottom), int(left), int(right)]})


# ----------------------------------------------------------------------------------- segmenter


@dataclass
class ClassicalSegmenter:
    """Thresholds, connected components and a few shape rules; no learned weights."""

    name: str = "classical"
    work_size: int = WORK_SIZE

    def segment(self, image01: np.ndarray) -> Anatomy:
        img = np.asarray(image01, dtype=np.float32)
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {img.shape}")
        if min(img.shape) < 16:  # too small to find anything: say so and use the template
            anatomy = template_anatomy((int(img.shape[0]), int(img.shape[1])), reason="image under 16 px")
            anatomy.quality["segmenter"] = self.name
            return anatomy
        # Segment at the working size whatever the caller's grid: larger images are shrunk (speed), smaller
        # ones enlarged -- at a 128-px model grid the morphology, quantised to whole pixels, otherwise
        # lets a lung apex merge with the air above the shoulder (then the lung climbs the chest wall).
        scale = self.work_size / max(img.shape)
        work = ndi.zoom(img, scale, order=1) if abs(scale - 1.0) > 1e-6 else img
        anatomy = self._segment_work(work)
        if work.shape != img.shape:
            anatomy = _resize_anatomy(anatomy, img.shape)
        anatomy.quality["segmenter"] = self.name
        return anatomy

    # The steps of the module docstring, on the working grid.
    def _segment_work(self, img: np.ndarray) -> Anatomy:
        h, w = img.shape
        size = max(h, w)
        lo, hi = np.percentile(img, [1, 99])
        if hi - lo < 1e-3:
            return template_anatomy((h, w), reason="flat image")
        g = ndi.gaussian_filter(np.clip((img - lo) / (hi - lo), 0, 1), 0.012 * size)
        dark = g < _otsu(g.ravel())
        frame = np.zeros((h, w), bool)
        fw = max(2, int(0.06 * min(h, w)))
        frame[:fw], frame[-fw:], frame[:, :fw], frame[:, -fw:] = True, True, True, True
        body_box = self._body_box(dark, frame)
        # Cut thin bridges (neck, axillae) between lungs and the outside air, then drop outside air.
        radius = max(1, int(0.05 * size))
        opened = dilate(erode(dark, radius), radius) & dark
        labels, n = ndi.label(opened)
        candidates: list[np.ndarray] = []
        for i in range(1, n + 1):
            comp = labels == i
            area = comp.sum()
            if area < 0.01 * h * w:
                continue
            if (comp & frame).sum() > 0.15 * area:
                continue  # mostly in the outer frame: air outside the body
            # Re-grow what the opening shaved off, but only within its radius of this component.
            candidates.append((dilate(comp, radius) & dark) | comp)
        notes: list[str] = []
        centre = (w - 1) / 2
        sides: dict[str, np.ndarray] = {}
        for comp in sorted(candidates, key=lambda c: -int(c.sum())):
            cx = float(np.nonzero(comp)[1].mean())
            if abs(cx - centre) < 0.04 * w:  # straddles the midline: split it into two halves
                cols = np.arange(w)[None, :]
                for side, part in (("image_left", comp & (cols < centre)), ("image_right", comp & (cols >= centre))):
                    if side not in sides and part.sum() > 0.01 * h * w:
                        sides[side] = part
                        notes.append(f"{side} lung split from a component crossing the midline")
                continue
            side = "image_left" if cx < centre else "image_right"
            sides.setdefault(side, comp)
        thin_frame = np.zeros((h, w), bool)
        tf = max(1, int(0.03 * min(h, w)))
        thin_frame[:tf], thin_frame[-tf:], thin_frame[:, :tf], thin_frame[:, -tf:] = True, True, True, True
        raw = {s: c & ~thin_frame for s, c in sides.items()}  # the dark lung itself: hugs the heart
        for side, comp in raw.items():
            # The hull covers what lies over the lung in projection (opacities, vessels, heart overlap);
            # limited to a band around the dark lung so a leftover bridge cannot inflate it.
            near = dilate(comp, 0.08 * size)
            sides[side] = ndi.binary_fill_holes(_filled_hull(comp) & near) & ~thin_frame

        problem = self._implausible(sides, h, w)
        if problem == "one":
            found = next(iter(sides))
            other = "image_right" if found == "image_left" else "image_left"
            sides[other] = self._mirror(sides[found], body_box)
            raw[other] = sides[other]
            notes.append(f"only the {found} lung was found; the {other} lung is its mirror image")
        elif problem:
            return template_anatomy((h, w), body_box, reason=problem)

        bottoms: dict[str, int] = {}
        for side in IMAGE_SIDES:
            base = self._diaphragm_row(g, sides[side])
            if base is not None and base > _rows_cols(sides[side])[1]:
                notes.append(f"{side} lung base moved down to the diaphragm at row {base / h:.2f}")
                sides[side] = _stretch_down(sides[side], base)
            bottoms[side] = _rows_cols(sides[side])[1]
        # A base far above the other side's is fluid or collapse hiding the lung, not a short lung:
        # extend it to just above the other side's base (the right dome normally sits a little higher).
        for side, other in (("image_left", "image_right"), ("image_right", "image_left")):
            target = bottoms[other] - int(0.03 * h)
            if bottoms[other] - bottoms[side] > 0.08 * h and target > bottoms[side]:
                sides[side] = _stretch_down(sides[side], target)
                notes.append(f"{side} lung base far above the other side's (fluid or collapse?): "
                             f"extended to row {target / h:.2f}")
                bottoms[side] = target
        overlap = sides["image_left"] & sides["image_right"]
        if overlap.any():  # convex hulls may touch behind the mediastinum
            sides["image_left"] &= ~overlap
            sides["image_right"] &= ~overlap
        method = "classical" if not any("mirror" in n for n in notes) else "classical+mirror"
        return _assemble(sides, bottoms, {"method": method, "notes": notes, "body_box": list(body_box)},
                         raw=raw)

    @staticmethod
    def _body_box(dark: np.ndarray, frame: np.ndarray) -> tuple[int, int, int, int]:
        """Bounding box of everything that is not outside air (dark and connected to the frame)."""
        labels, _ = ndi.label(dark)
        outside_ids = np.unique(labels[frame & dark])
        outside = np.isin(labels, outside_ids[outside_ids > 0])
        body = ~outside
        if body.sum() < 0.2 * body.size:
            h, w = dark.shape
            return (0, h - 1, 0, w - 1)
        return _rows_cols(body)

    @staticmethod
    def _implausible(sides: dict[str, np.ndarray], h: int, w: int) -> str:
        """Empty when both lungs look plausible; "one" when only one does; else the reason."""
        plausible = {s: m for s, m in sides.items() if 0.02 <= m.mean() <= 0.4}
        if len(plausible) == 1 and len(sides) >= 1:
            sides.clear()
            sides.update(plausible)
            return "one"
        if len(plausible) < 2:
            return f"no plausible lung fields ({len(plausible)} found)"
        lt, lb, _, _ = _rows_cols(sides["image_left"])
        rt, rb, _, _ = _rows_cols(sides["image_right"])
        overlap = min(lb, rb) - max(lt, rt)
        if overlap < 0.5 * min(lb - lt, rb - rt):
            return "lung fields do not lie side by side"
        areas = sorted(m.mean() for m in sides.values())
        if areas[0] < 0.2 * areas[1]:
            big = max(sides, key=lambda s: sides[s].mean())
            sides.clear()
            sides[big] = plausible[big]
            return "one"
        return ""

    @staticmethod
    def _mirror(lung: np.ndarray, body_box: tuple[int, int, int, int]) -> np.ndarray:
        _, _, left, right = body_box
        mid = (left + right) / 2
        h, w = lung.shape
        cols = np.clip(np.rint(2 * mid - np.arange(w)).astype(int), 0, w - 1)
        mirrored = lung[:, cols]
        return mirrored & ~lung

    @staticmethod
    def _diaphragm_row(g: np.ndarray, lung: np.ndarray) -> int | None:
        """Row where the column-averaged profile below the lung's middle rises for good to the
        sub-diaphragmatic level (the hemidiaphragm), or None when there is no clear rise."""
        h, w = g.shape
        top, bottom, left, right = _rows_cols(lung)
        width = right - left + 1
        # Lateral columns only: medially the heart and the stomach shadow rise earlier than the lung ends.
        if (left + right) / 2 < w / 2:
            c0, c1 = left + int(0.15 * width), left + int(0.5 * width) + 1
        else:
            c0, c1 = right - int(0.5 * width), right - int(0.15 * width) + 1
        if c1 <= c0:
            return None
        profile = g[:, c0:c1].mean(axis=1)
        start = top + (bottom - top) // 2
        lung_level = float(np.median(profile[top + (bottom - top) // 4: start + 1]))
        below_level = float(np.percentile(profile[start:], 90))
        if below_level - lung_level < 0.1:
            return None
        # Nearer the dense level than the midpoint: soft tissue over the lower lungs is already brighter.
        threshold = lung_level + 0.7 * (below_level - lung_level)
        under = np.flatnonzero(profile[start:] < threshold)
        if under.size == 0:
            return None
        row = start + int(under[-1])
        return row if row < h - 1 else None


def _resize_anatomy(anatomy: Anatomy, shape: tuple[int, int]) -> Anatomy:
    """Nearest-neighbour upsampling of every mask to the caller's grid (pixel-centre sampling)."""
    masks: dict[str, np.ndarray] = {}
    for key, m in anatomy.masks.items():
        rows = np.minimum(((np.arange(shape[0]) + 0.5) * m.shape[0] / shape[0]).astype(int), m.shape[0] - 1)
        cols = np.minimum(((np.arange(shape[1]) + 0.5) * m.shape[1] / shape[1]).astype(int), m.shape[1] - 1)
        masks[key] = m[np.ix_(rows, cols)]
    return Anatomy(masks, anatomy.quality)


_REGISTRY: dict[str, Callable[[], Segmenter]] = {"classical": ClassicalSegmenter}


def register_segmenter(name: str, factory: Callable[[], Segmenter]) -> None:
    """Make a segmenter available by name (e.g. a learned one loading local weights)."""
    _REGISTRY[name] = factory


def get_segmenter(name: str = "classical") -> Segmenter:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown segmenter {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
