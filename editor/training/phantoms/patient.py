"""One synthetic patient: anatomy, exposure and noise drawn at random (`Patient.sample`), what one
drawing of them shows (`Findings`), and the PA display convention (the patient's left on the image's
right)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

PatientSide = Literal["left", "right"]
Severity = Literal["small", "moderate", "large"]
Zone = Literal["upper", "middle", "lower"]

SEVERITIES: tuple[Severity, ...] = ("small", "moderate", "large")
NORMAL_CTR = (0.38, 0.46)
ENLARGED_CTR = (0.56, 0.64)


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
