"""Longitudinal phantom pairs: the same patient drawn twice, differing only in one finding
(`sample_pair` chooses it), with the instruction in the editor's own grammar (`instruction_for`,
parsed back as a check); `make_pair` draws pair `index` of a seeded dataset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from editor.training.phantoms.drawing import change_mask, expose, render
from editor.training.phantoms.patient import SEVERITIES, Findings, Patient, PatientSide, Zone


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
