"""`ClassicalSegmenter`: the two lung fields of a frontal chest radiograph without learned weights.

It works on the display image (bone bright, [0, 1]) of a frontal chest radiograph drawn head-up:
  1. contrast-stretch and smooth; Otsu threshold -> dark regions (air: lungs and outside the body);
  2. dark components that mostly lie in the image's outer frame are outside air; thin bridges from a
     lung to the frame (neck, axillae) are cut by a morphological opening;
  3. the largest dark component on each side of the image centre is that side's lung; each becomes its
     filled convex hull (lungs overlap heart and opacities in projection, which thresholds miss);
  4. the base is moved down to the diaphragm, found per lung as the last rise of the column-averaged
     intensity profile to the sub-diaphragmatic level (dense lower lungs stop a threshold early);
  5. the heart is the dense lower region between the lung fields' medial edges (the cardiac borders,
     followed row by row down to the diaphragm, so the apex is inside), with a rounded top (heart.py);
  6. zones are vertical thirds of each lung; apex = top 30 %; costophrenic angle = lower-lateral
     corner; hilum = medial middle; lateral margin = the lateral band of each row; hemithorax = the
     thoracic cavity on that side (the lung widened to the chest wall and down to the diaphragm, for
     findings that hide aerated lung) (lung_parts.py).
Images smaller than the working size are enlarged to it first (the rules are tuned there). When only
one lung is found it is mirrored about the midline; when none is plausible a geometric
template of a standard PA chest, scaled to the body's bounding box, is used instead. Either way
`quality["method"]` and `quality["notes"]` say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from editor.anatomy.assembly import assemble_anatomy, template_anatomy
from editor.anatomy.morphology import dilate, erode, filled_hull, mask_bounds, otsu_threshold, stretch_down
from editor.anatomy.types import IMAGE_SIDES, Anatomy

WORK_SIZE = 256  # segment at most this many pixels along the longer side (speed; shapes are coarse)


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
        dark = g < otsu_threshold(g.ravel())
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
            sides[side] = ndi.binary_fill_holes(filled_hull(comp) & near) & ~thin_frame

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
            if base is not None and base > mask_bounds(sides[side])[1]:
                notes.append(f"{side} lung base moved down to the diaphragm at row {base / h:.2f}")
                sides[side] = stretch_down(sides[side], base)
            bottoms[side] = mask_bounds(sides[side])[1]
        # A base far above the other side's is fluid or collapse hiding the lung, not a short lung:
        # extend it to just above the other side's base (the right dome normally sits a little higher).
        for side, other in (("image_left", "image_right"), ("image_right", "image_left")):
            target = bottoms[other] - int(0.03 * h)
            if bottoms[other] - bottoms[side] > 0.08 * h and target > bottoms[side]:
                sides[side] = stretch_down(sides[side], target)
                notes.append(f"{side} lung base far above the other side's (fluid or collapse?): "
                             f"extended to row {target / h:.2f}")
                bottoms[side] = target
        overlap = sides["image_left"] & sides["image_right"]
        if overlap.any():  # convex hulls may touch behind the mediastinum
            sides["image_left"] &= ~overlap
            sides["image_right"] &= ~overlap
        method = "classical" if not any("mirror" in n for n in notes) else "classical+mirror"
        return assemble_anatomy(sides, bottoms, {"method": method, "notes": notes, "body_box": list(body_box)},
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
        return mask_bounds(body)

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
        lt, lb, _, _ = mask_bounds(sides["image_left"])
        rt, rb, _, _ = mask_bounds(sides["image_right"])
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
        top, bottom, left, right = mask_bounds(lung)
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
