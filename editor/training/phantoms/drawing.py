"""Drawing a phantom: the clean image of a patient with its findings (`render`), each finding drawn
analytically; exposure, blur and noise (`expose`); the ground-truth change between two drawings
(`change_mask`); the analytic lung regions; and a phantom as the editor's input (`to_source_image`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from editor.training.phantoms.patient import Findings, Patient, image_side

if TYPE_CHECKING:
    from editor.types import SourceImage

# Effusion fluid height as a fraction of the lung's height.
EFFUSION_LEVEL: dict[str, float] = {"small": 0.07, "moderate": 0.2, "large": 0.36}
CHANGE_THRESHOLD = 0.03  # |current - past| on the clean image that counts as changed


def _lung_centre_x(p: Patient, img_side: str) -> float:
    return p.cx - p.lung_offset if img_side == "image_left" else p.cx + p.lung_offset


def _dome_y(p: Patient, img_side: str, x: np.ndarray) -> np.ndarray:
    """Diaphragm dome under one lung: highest under its centre, lowest at the lateral angle."""
    lx = _lung_centre_x(p, img_side)
    u = np.clip((x - lx) / p.lung_half_width, -1.0, 1.0)
    raise_ = p.right_dome_raise if img_side == "image_left" else 0.0  # patient's right = image left
    return p.base - raise_ - p.dome_height * (1.0 - u**2)


def _lung_mask(p: Patient, img_side: str, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Upper half of an ellipse (apex at p.top, widest at the base) cut by the dome."""
    lx = _lung_centre_x(p, img_side)
    ry = p.base - p.top
    ell = ((xx - lx) / p.lung_half_width) ** 2 + ((yy - p.base) / ry) ** 2
    return (ell <= 1.0) & (yy <= _dome_y(p, img_side, xx))


def _heart(p: Patient, enlarged: bool, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Soft heart silhouette, mostly to the image-right (patient's left) of the midline."""
    thorax_width = 2 * (p.lung_offset + p.lung_half_width)
    ctr = p.ctr_enlarged if enlarged else p.ctr_normal
    rx = ctr * thorax_width / 2
    hx = p.cx + 0.3 * rx
    hy = p.base - p.dome_height - 0.35 * p.heart_height
    ry = p.heart_height * (1.0 + (0.25 if enlarged else 0.0))
    ell = ((xx - hx) / rx) ** 2 + ((yy - hy) / ry) ** 2
    return np.clip((1.0 - ell) * 8.0, 0.0, 1.0)


def _vessels(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Vascular markings: faint rays fanning out from each hilum, fading toward the periphery."""
    rng = np.random.default_rng(p.vessel_seed)
    out = np.zeros_like(xx)
    for sign in (-1.0, 1.0):  # image-left lung, image-right lung
        hx = p.cx + sign * (p.lung_offset - 0.45 * p.lung_half_width)
        hy = p.top + 0.5 * (p.base - p.top)
        for _ in range(12):
            angle = rng.uniform(-0.75 * np.pi, 0.75 * np.pi)  # around "outward"
            dx, dy = sign * np.cos(angle), np.sin(angle)
            rel_x, rel_y = xx - hx, yy - hy
            along = rel_x * dx + rel_y * dy
            across = np.abs(-rel_x * dy + rel_y * dx)
            length = rng.uniform(0.12, 0.25)
            width = rng.uniform(0.003, 0.006)
            ray = np.exp(-((across / width) ** 2)) * np.clip(1 - along / length, 0, 1) * (along > 0)
            out = np.maximum(out, ray * rng.uniform(0.5, 1.0))
    return out


def _ribs(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Posterior rib arcs: bands curving down laterally."""
    curved = yy - 0.9 * (xx - p.cx) ** 2
    phase = (curved / p.rib_spacing + p.rib_phase) % 1.0
    return np.clip(1.0 - np.abs(phase - 0.5) / 0.2, 0.0, 1.0) ** 1.5


def region_masks(p: Patient, size: int) -> dict[str, np.ndarray]:
    """Analytic regions of a phantom (image-side names): each lung and its base (lowest 40 %)."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    xx, yy = np.meshgrid(coords, coords)
    out: dict[str, np.ndarray] = {}
    for s in ("image_left", "image_right"):
        lung = _lung_mask(p, s, xx, yy)
        out[f"lung_{s}"] = lung
        out[f"base_{s}"] = lung & (yy > p.top + 0.6 * (p.base - p.top))
    return out


def render(p: Patient, f: Findings, size: int) -> np.ndarray:
    """The clean image (float32 [0, 1], before exposure and noise)."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    xx, yy = np.meshgrid(coords, coords)
    img = np.full((size, size), 0.04)  # air outside the body

    # Body: a wide rounded trunk with shoulders near the top.
    body_half = p.lung_offset + p.lung_half_width + 0.07
    body = np.clip((1.0 - (np.abs(xx - p.cx) / body_half) ** 6) * 6.0, 0.0, 1.0) * (yy > p.top - 0.09)
    img = img + body * 0.52
    # Clavicles: bright bars across the top of the lungs.
    for sign in (-1.0, 1.0):
        cl_y = p.top + 0.025 + 0.25 * (np.abs(xx - p.cx) - 0.03)
        clav = np.exp(-(((yy - cl_y) / 0.012) ** 2)) * (sign * (xx - p.cx) > 0.03)
        clav *= sign * (xx - p.cx) < p.lung_offset + p.lung_half_width
        img += 0.12 * clav

    lungs = {s: _lung_mask(p, s, xx, yy) for s in ("image_left", "image_right")}
    lung_any = lungs["image_left"] | lungs["image_right"]
    vessels = _vessels(p, xx, yy)
    ribs = _ribs(p, xx, yy)
    lung_value = 0.17 + 0.09 * vessels + 0.07 * ribs

    # Pneumothorax: beyond the visceral pleural line the lung is collapsed away: no markings, darker.
    ptx_space = np.zeros_like(xx, dtype=bool)
    ptx_line = np.zeros_like(xx)
    if f.pneumothorax is not None:
        s = image_side(f.pneumothorax)
        lx = _lung_centre_x(p, s)
        medial = 1.0 if s == "image_left" else -1.0  # direction toward the midline
        g = p.ptx_gap
        rx_in, ry_in = p.lung_half_width - g, (p.base - p.top) - g
        ell_in = ((xx - (lx + medial * 0.4 * g)) / rx_in) ** 2 + ((yy - p.base) / ry_in) ** 2
        apical = yy < p.top + 0.5 * (p.base - p.top)
        ptx_space = lungs[s] & (ell_in > 1.0) & apical
        edge = np.abs(np.sqrt(ell_in) - 1.0) * rx_in
        ptx_line = np.exp(-((edge / 0.004) ** 2)) * lungs[s] * apical * (ell_in <= 1.0)
        lung_value = np.where(ptx_space, 0.11 + 0.07 * ribs, lung_value)
        lung_value = lung_value + 0.16 * ptx_line

    img = np.where(lung_any, lung_value, img)
    # Spine and mediastinum: a bright central column above the heart.
    spine = np.clip((1.0 - np.abs(xx - p.cx) / 0.045) * 4, 0, 1) * (yy > p.top - 0.08)
    img = np.maximum(img, 0.6 * spine)
    # Heart over the medial lung bases.
    heart = _heart(p, f.cardiomegaly, xx, yy)
    img = img * (1 - heart) + 0.66 * heart

    for side, severity in f.effusion.items():
        s = image_side(side)
        lx = _lung_centre_x(p, s)
        lateral = np.clip((xx - lx) / p.lung_half_width * (1.0 if s == "image_right" else -1.0), -1, 1)
        height = EFFUSION_LEVEL[severity] * (p.base - p.top)
        # Meniscus: the fluid climbs the lateral chest wall.
        level = p.base - height - 0.05 * np.clip(lateral, 0, 1) ** 2 * (1 + height * 3)
        fluid = np.clip((yy - level) / 0.012 + 0.5, 0.0, 1.0) * lungs[s]
        img = img * (1 - fluid) + (0.56 + 0.05 * np.clip((yy - level) / 0.1, 0, 1)) * fluid

    if f.opacity is not None:
        side, zone = f.opacity
        s = image_side(side)
        lx = _lung_centre_x(p, s)
        zone_index = {"upper": 0, "middle": 1, "lower": 2}[zone]
        lung_h = p.base - p.dome_height - p.top
        oy = p.top + lung_h * (zone_index + 0.5 + 0.3 * p.opacity_dy) / 3
        lateral_sign = 1.0 if s == "image_right" else -1.0
        # Lateral half of the lung, clear of the heart: a focal opacity that reads as parenchymal.
        ox = lx + lateral_sign * p.lung_half_width * (0.3 + 0.25 * p.opacity_dx)
        blob = np.exp(-(((xx - ox) ** 2 + (yy - oy) ** 2) / p.opacity_radius**2) * 1.5)
        img = img + 0.3 * blob * lungs[s] * (1 - heart)

    return np.clip(img, 0.0, 1.0).astype(np.float32)


def expose(p: Patient, clean: np.ndarray) -> np.ndarray:
    """Exposure, detector blur and noise (the same for both time points of a patient) -> uint8."""
    img = ndimage.gaussian_filter(clean.astype(np.float64), 0.6)
    img = np.clip(img * p.contrast + p.brightness, 0.0, 1.0) ** p.gamma
    noise = np.random.default_rng(p.noise_seed).normal(0.0, 0.015, img.shape)
    return np.clip(np.round((img + noise) * 255.0), 0, 255).astype(np.uint8)


def change_mask(past_clean: np.ndarray, current_clean: np.ndarray) -> np.ndarray:
    return np.abs(current_clean.astype(np.float64) - past_clean) > CHANGE_THRESHOLD


def to_source_image(pixels: np.ndarray) -> SourceImage:
    """A phantom as the editor's input: 8-bit MONOCHROME2, PA view, rows run toward the patient's left."""
    from editor.types import SourceImage

    return SourceImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.uint8),
        photometric="MONOCHROME2",
        bits_stored=8,
        # DICOM linear VOI with centre 128 / width 256 maps stored x to x / 255: the display the model
        # was trained on (no percentile stretch).
        window_center=128.0,
        window_width=256.0,
        patient_orientation=("L", "F"),
        view_position="PA",
    )
