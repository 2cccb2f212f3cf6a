"""Synthetic frontal chest "phantoms" with findings that can be added or removed.

They stand in for MIMIC-CXR where no real data is reachable: the demo model is trained on them and the
semantic tests edit held-out ones. Each image is drawn in the PA display convention (the patient's left
on the image's RIGHT, head at the top): body, two dark lung fields, a bright heart lying mostly to the
image-right of the midline, mediastinum and spine, diaphragm domes with sharp costophrenic angles, rib
arcs, vascular markings fanning out from the hila, noise, and varied size / position / exposure.

Findings (each drawn analytically so the ground-truth change is known exactly):
  pleural effusion  at either base, small / moderate / large: fluid filling the costophrenic angle,
                    its upper edge a meniscus rising toward the lateral chest wall;
  cardiomegaly      the heart widened to a cardiothoracic ratio > 0.55 (normal 0.38-0.47);
  lung opacity      a focal blob in a given zone (upper / middle / lower) of one lung;
  pneumothorax      at an apex: a visceral pleural line with no lung markings beyond it.

A longitudinal pair is the same patient drawn twice (same anatomy, exposure and noise) differing only
in one finding, so the change mask |current - past| is the finding's own footprint. The instruction
comes from `editor.instructions` (the editor's own grammar) and is parsed back as a check.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from editor.types import SourceImage

PatientSide = Literal["left", "right"]
Severity = Literal["small", "moderate", "large"]
Zone = Literal["upper", "middle", "lower"]

# Effusion fluid height as a fraction of the lung's height.
EFFUSION_LEVEL: dict[str, float] = {"small": 0.07, "moderate": 0.2, "large": 0.36}
SEVERITIES: tuple[Severity, ...] = ("small", "moderate", "large")
NORMAL_CTR = (0.38, 0.46)
ENLARGED_CTR = (0.56, 0.64)
CHANGE_THRESHOLD = 0.03  # |current - past| on the clean image that counts as changed
SPLIT_FRACTIONS = (("train", 0.9), ("validate", 0.05), ("test", 0.05))


def image_side(side: PatientSide) -> Literal["image_left", "image_right"]:
    """PA display: the patient's left is on the image's right."""
    return "image_right" if side == "left" else "image_left"


@dataclass(frozen=True)
class Findings:
    """What one drawing of a patient shows."""

    effusion: dict[PatientSide, Severity] = field(default_factory=dict)
    cardiomegaly: bool = False
    opacity: tuple[PatientSide, Zone] | None = None
    pneumothorax: PatientSide | None = None


@dataclass(frozen=True)
class Patient:
    """Anatomy, exposure and noise of one synthetic patient (drawn identically at both time points)."""

    cx: float  # midline x (0..1, image coordinates)
    top: float  # lung apex y
    base: float  # costophrenic angle y (lateral end of the domes)
    lung_half_width: float  # each lung's horizontal radius
    lung_offset: float  # distance from the midline to each lung's centre
    dome_height: float
    right_dome_raise: float  # the patient's right hemidiaphragm sits a little higher
    ctr_normal: float
    ctr_enlarged: float
    heart_height: float
    opacity_dx: float  # position of a focal opacity inside its zone, in [-1, 1]
    opacity_dy: float
    opacity_radius: float
    ptx_gap: float  # pneumothorax rim width
    contrast: float
    brightness: float
    gamma: float
    noise_seed: int
    rib_phase: float
    rib_spacing: float
    vessel_seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Patient:
        scale = float(rng.uniform(0.9, 1.06))
        top = float(rng.uniform(0.1, 0.17))
        return cls(
            cx=float(0.5 + rng.uniform(-0.03, 0.03)),
            top=top,
            base=float(min(0.86, top + scale * rng.uniform(0.6, 0.68))),
            lung_half_width=float(scale * rng.uniform(0.15, 0.17)),
            lung_offset=float(scale * rng.uniform(0.19, 0.215)),
            dome_height=float(rng.uniform(0.05, 0.08)),
            right_dome_raise=float(rng.uniform(0.01, 0.03)),
            ctr_normal=float(rng.uniform(*NORMAL_CTR)),
            ctr_enlarged=float(rng.uniform(*ENLARGED_CTR)),
            heart_height=float(scale * rng.uniform(0.12, 0.15)),
            opacity_dx=float(rng.uniform(-0.5, 0.5)),
            opacity_dy=float(rng.uniform(-0.4, 0.4)),
            opacity_radius=float(rng.uniform(0.035, 0.06)),
            ptx_gap=float(rng.uniform(0.03, 0.055)),
            contrast=float(rng.uniform(0.85, 1.12)),
            brightness=float(rng.uniform(-0.05, 0.05)),
            gamma=float(rng.uniform(0.85, 1.2)),
            noise_seed=int(rng.integers(0, 2**31 - 1)),
            rib_phase=float(rng.uniform(0, 1)),
            rib_spacing=float(rng.uniform(0.075, 0.09)),
            vessel_seed=int(rng.integers(0, 2**31 - 1)),
        )


# --- drawing -------------------------------------------------------------------------------------


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


# --- longitudinal pairs and instructions ---------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    past: Findings
    current: Findings
    operation: Literal["add", "remove", "change"]
    finding: str  # canonical finding name
    side: PatientSide
    severity: str | None = None  # for add/remove: the severity word (effusion only)
    zone: Zone | None = None
    level_from: str | None = None
    level_to: str | None = None

    @property
    def location(self) -> tuple[str, ...]:
        if self.finding == "cardiomegaly":  # a whole-heart finding: the sentence names no side
            return ()
        if self.finding == "pneumothorax":  # drawn at the apex only
            return (self.side, "apical")
        return (self.side,) if self.zone is None else (self.side, self.zone)


def instruction_for(spec: PairSpec) -> str:
    """The canonical sentence, built and checked through the editor's own grammar."""
    from editor.instructions import ParsedInstruction, parse_instruction

    if spec.operation == "change":
        assert spec.level_from is not None and spec.level_to is not None
        parsed = ParsedInstruction.change(spec.finding, spec.level_from, spec.level_to, location=spec.location)
    else:
        make = ParsedInstruction.add if spec.operation == "add" else ParsedInstruction.remove
        parsed = make((spec.finding,), location=spec.location, severity=spec.severity)
    text = parsed.canonical()
    back = parse_instruction(text)
    if back != parsed:  # the dataset must speak exactly the editor's language
        raise AssertionError(f"instruction {text!r} parses back as {back!r}, not {parsed!r}")
    return text


def sample_pair(rng: np.random.Generator) -> PairSpec:
    """One finding changes; sometimes another, unchanged finding is present at both time points."""
    kind = rng.choice(["effusion", "cardiomegaly", "opacity", "pneumothorax"], p=[0.45, 0.2, 0.2, 0.15])
    side: PatientSide = "left" if rng.random() < 0.5 else "right"
    op = str(rng.choice(["add", "remove"]))
    background = Findings()
    if rng.random() < 0.25 and kind != "cardiomegaly":
        background = replace(background, cardiomegaly=True)
    if rng.random() < 0.2 and kind != "effusion":
        background = replace(background, effusion={_other(side): SEVERITIES[int(rng.integers(0, 3))]})

    with_finding: Findings
    severity: str | None = None
    zone: Zone | None = None
    if kind == "effusion":
        if rng.random() < 0.2:  # change of level
            a, b = rng.choice(3, size=2, replace=False)
            past = replace(background, effusion={**background.effusion, side: SEVERITIES[a]})
            current = replace(background, effusion={**background.effusion, side: SEVERITIES[b]})
            return PairSpec(past, current, "change", "pleural effusion", side,
                            level_from=SEVERITIES[a], level_to=SEVERITIES[b])
        drawn = SEVERITIES[int(rng.integers(0, 3))]
        with_finding = replace(background, effusion={**background.effusion, side: drawn})
        # A third of the sentences name no severity ("Add the finding of left pleural effusion.").
        severity = drawn if rng.random() < 0.67 else None
        name = "pleural effusion"
    elif kind == "cardiomegaly":
        with_finding = replace(background, cardiomegaly=True)
        name = "cardiomegaly"
        side = "left"  # the heart enlarges toward the patient's left; cardiomegaly takes no side word
    elif kind == "opacity":
        drawn_zone: Zone = ("upper", "middle", "lower")[int(rng.integers(0, 3))]  # type: ignore[assignment]
        zone = drawn_zone
        with_finding = replace(background, opacity=(side, drawn_zone))
        name = "lung opacity"
    else:
        with_finding = replace(background, pneumothorax=side)
        name = "pneumothorax"
    past, current = (background, with_finding) if op == "add" else (with_finding, background)
    return PairSpec(past, current, op, name, side, severity=severity, zone=zone)  # type: ignore[arg-type]


def _other(side: PatientSide) -> PatientSide:
    return "right" if side == "left" else "left"


def _location_words(spec: PairSpec) -> str:
    return " ".join(spec.location)


@dataclass
class PhantomPair:
    pair_id: str
    past_id: str
    current_id: str
    past: np.ndarray  # uint8 (size, size)
    current: np.ndarray
    mask: np.ndarray  # bool, ground-truth change
    spec: PairSpec
    patient: Patient
    instruction: str


def make_pair(seed: int, index: int, size: int) -> PhantomPair:
    """Pair `index` of the dataset with `seed` (independent of how many pairs are drawn)."""
    rng = np.random.default_rng([seed, index])
    patient = Patient.sample(rng)
    spec = sample_pair(rng)
    past_clean = render(patient, spec.past, size)
    current_clean = render(patient, spec.current, size)
    pair_id = f"ph{seed}-{index:06d}"
    return PhantomPair(
        pair_id=pair_id,
        past_id=f"{pair_id}-past",
        current_id=f"{pair_id}-current",
        past=expose(patient, past_clean),
        current=expose(patient, current_clean),
        mask=change_mask(past_clean, current_clean),
        spec=spec,
        patient=patient,
        instruction=instruction_for(spec),
    )


def iter_pairs(seed: int, n: int, size: int) -> Iterator[PhantomPair]:
    for i in range(n):
        yield make_pair(seed, i, size)


def _split_for(seed: int, index: int) -> str:
    u = np.random.default_rng([seed, index, 7]).random()
    acc = 0.0
    for name, frac in SPLIT_FRACTIONS:
        acc += frac
        if u < acc:
            return name
    return SPLIT_FRACTIONS[-1][0]


def _write_pair(job: tuple[str, int, int, int]) -> tuple[dict[str, str], str]:
    """Draw and write pair `index`; returns its CSV row and its "operation finding" label."""
    from PIL import Image

    out_dir, seed, index, size = job
    out = Path(out_dir)
    pair = make_pair(seed, index, size)
    Image.fromarray(pair.past).save(out / "images" / f"{pair.past_id}.png")
    Image.fromarray(pair.current).save(out / "images" / f"{pair.current_id}.png")
    Image.fromarray((pair.mask * 255).astype(np.uint8)).save(out / "masks" / f"{pair.pair_id}.png")
    spec = pair.spec
    severity = spec.severity or (f"{spec.level_from} to {spec.level_to}" if spec.level_from else "")
    row = {
        "split": _split_for(seed, index),
        "current_dicom_id": pair.current_id,
        "past_dicom_id": pair.past_id,
        "instruction": pair.instruction,
        "location": _location_words(spec),
        "severity": severity,
        "pair_id": pair.pair_id,
    }
    return row, f"{spec.operation} {spec.finding}"


CSV_COLUMNS = ("split", "current_dicom_id", "past_dicom_id", "instruction", "location", "severity", "pair_id")


def write_dataset(out_dir: str | Path, *, n: int = 2000, size: int = 128, seed: int = 0,
                  workers: int = 1) -> dict[str, object]:
    """Write `n` pairs in the MIMIC-EDIT-INSTRUCTION layout (instructions.csv + images/<id>.png) plus
    masks/<pair_id>.png (ground-truth change) and phantoms.json. Same seed, same files, any `workers`."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, size) for i in range(n)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_pair, jobs, chunksize=32))
    else:
        results = [_write_pair(job) for job in jobs]
    counts: Counter[str] = Counter()
    for row, label in results:
        counts[label] += 1
        counts[f"split {row['split']}"] += 1
    with (out / "instructions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(row for row, _ in results)
    summary: dict[str, object] = {
        "kind": "x2x-phantoms",
        "seed": seed,
        "n": n,
        "size": size,
        "convention": "PA display: patient's left on the image's right; head at the top",
        "counts": dict(sorted(counts.items())),
        "synthetic": True,
    }
    (out / "phantoms.json").write_text(json.dumps(summary, indent=2))
    return summary


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
