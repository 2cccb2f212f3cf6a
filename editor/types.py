"""The data that crosses the seam `Editor.edit(image, instruction, *, seed, params) -> EditResult`.

`SourceImage` carries a stored pixel array plus the few DICOM facts the editor needs; the editor never
sees a network or a PACS. `EditResult` carries arrays on the source's native grid plus provenance.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from editor.instructions import ParsedInstruction


@dataclass(frozen=True)
class SourceImage:
    """A 2-D grayscale radiograph as stored, plus what is needed to display and restore it."""

    pixels: np.ndarray  # (rows, cols), stored values, source dtype (uint8/uint16/int16 ...)
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2"
    bits_stored: int = 16
    pixel_signed: bool = False
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None
    voi_lut_function: str | None = None  # LINEAR / LINEAR_EXACT / SIGMOID
    voi_lut: np.ndarray | None = None  # (VOI LUT Sequence) table values, first mapped value, bits
    voi_lut_first_mapped: int = 0
    modality_lut: np.ndarray | None = None
    modality_lut_first_mapped: int = 0
    patient_orientation: tuple[str, str] | None = None  # (row direction, column direction), e.g. ("L", "F")
    view_position: str | None = None  # PA / AP / LL ...
    imager_pixel_spacing: tuple[float, float] | None = None
    sop_instance_uid: str | None = None  # for provenance only

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


def _knob(default: Any, help: str, **bounds: float) -> Any:
    """A field with its one-line description and numeric bounds (ge / le / multiple_of). The [edit]
    config section is generated from these, and EditParams checks the same bounds when constructed."""
    return field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class EditParams:
    """All knobs of one edit, with the paper's defaults. Every field goes into the provenance.

    This is the one schema of edit parameters: the node's `[edit]` config section, the CLI, the REST
    API and the job records are all validated by constructing it.
    """

    steps: int = _knob(100, "DDIM inference steps (the paper: 100); fewer = faster, coarser", ge=1, le=1000)
    text_guidance: float = _knob(7.5, "s_T, text guidance scale")
    image_guidance: float = _knob(1.5, "s_I, image guidance scale")
    tau: float = _knob(0.1, "guidance-map threshold; 0 = no RSE (plain InstructPix2Pix)", ge=0.0, le=1.0)
    rse: bool = _knob(True, "region-specific editing; false = plain InstructPix2Pix (as tau = 0)")
    relevance_timestep: int = _knob(800, "noise level of the relevance map (0.8 x 1000 training steps)",
                                    ge=0, le=999)
    relevance_samples: int = _knob(1, "noise draws averaged into the relevance map (1 reproduces the paper)",
                                   ge=1, le=64)
    start: Literal["source", "noise"] = _knob(
        "source", "source = research code (source latents noised to the first timestep); noise = diffusers' "
        "pipeline (pure noise)")
    blend_timestep: Literal["current", "next"] = _knob(
        "current", "current = research code (default); next = corrected noise level after each step")
    prior: Literal["anatomy", "paper", "none"] = _knob(
        "anatomy", "region prior: per-image anatomy, the paper's fixed masks, or none")
    paper_prior_dir: str | None = _knob(None, "folder of pseudo_mask_<Finding>.npy for prior = paper")
    mask_cleanup: bool = _knob(True, "small morphological opening/closing of the binary mask")
    feather_px: int = _knob(4, "inward feathering of the mask edge at native resolution (pixels)", ge=0)
    resolution: int | None = _knob(None, "model grid's shorter side (the square's side for the research "
                                   "input profile); unset = the model's own", ge=64, multiple_of=8)

    def __post_init__(self) -> None:
        problems = [p for f in dataclasses.fields(self) if (p := _check(f, getattr(self, f.name)))]
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EditParams:
        """From a complete or partial dict (missing fields take their defaults); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown edit parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> EditParams:
        return dataclasses.replace(self, **changes)

    def batch_key(self) -> tuple[Any, ...]:
        """What edits must share to run through one UNet call per step (`Editor.edit_batch`). The rest
        (tau, RSE on/off, prior, clean-up, feathering) and the seed stay per image."""
        return tuple(getattr(self, name) for name in BATCH_KEY_FIELDS)


# EditParams fields that shape the shared denoising loop and the shared relevance pass.
BATCH_KEY_FIELDS = ("steps", "text_guidance", "image_guidance", "relevance_timestep", "relevance_samples",
                    "start", "blend_timestep", "resolution")


@functools.lru_cache(maxsize=1)
def _choices() -> dict[str, tuple[Any, ...]]:
    """Allowed values of the Literal-typed EditParams fields."""
    hints = typing.get_type_hints(EditParams)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is Literal}


def _check(f: dataclasses.Field[Any], value: Any) -> str | None:
    """Why `value` is not allowed for field `f`, or None."""
    choices = _choices().get(f.name)
    if choices is not None:
        return None if value in choices else f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}"
    bounds = {k: v for k, v in f.metadata.items() if k in ("ge", "le", "multiple_of")}
    if not bounds or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{f.name} must be a number, got {value!r}"
    wants_int = isinstance(f.default, int) or "multiple_of" in bounds
    if wants_int and not isinstance(value, int):
        return f"{f.name} must be an integer, got {value!r}"
    if "ge" in bounds and value < bounds["ge"] or "le" in bounds and value > bounds["le"]:
        return f"{f.name} must be in [{bounds.get('ge', '-inf')}, {bounds.get('le', 'inf')}], got {value!r}"
    if "multiple_of" in bounds and value % bounds["multiple_of"]:
        return f"{f.name} must be a multiple of {bounds['multiple_of']:g}, got {value!r}"
    return None


@dataclass(frozen=True)
class EditItem:
    """One edit of a batch (`Editor.edit_batch`): the arguments of `Editor.edit`."""

    image: SourceImage
    instruction: str | ParsedInstruction
    seed: int
    params: EditParams | None = None


@dataclass
class EditResult:
    """What one edit produced, on the source's native grid, with full provenance."""

    counterfactual: np.ndarray  # (rows, cols), source dtype, stored values, source photometric
    relevance: np.ndarray  # float32 [0, 1], native grid
    guidance: np.ndarray  # float32 [0, 1], native grid: G = prior * R
    mask: np.ndarray  # bool, native grid: M = G >= tau (after clean-up)
    # canonical finding name -> bool native mask (M restricted to that finding's prior); union == M
    finding_masks: dict[str, np.ndarray]
    coverage: float  # fraction of native pixels inside M
    instruction: ParsedInstruction
    prior_source: str  # "anatomy" | "paper" | "fallback" | "none"
    seed: int
    params: EditParams
    model_id: str
    model_hash: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    provenance: dict[str, Any] = field(default_factory=dict)  # laterality, regions, notes, ...
    source_display: np.ndarray | None = None  # float32 [0,1] native display image (for overlays)
    # What the text encoder saw: the instruction as written, whitespace normalised (== provenance["prompt"]).
    prompt: str = ""

    def __post_init__(self) -> None:
        if not self.prompt:
            self.prompt = self.instruction.prompt

    def summary(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-serialisable (result.json)."""
        return {
            "instruction": self.instruction.canonical(),
            "prompt": self.prompt,
            "parsed_instruction": self.instruction.to_dict(),
            "prior_source": self.prior_source,
            "coverage": self.coverage,
            "seed": self.seed,
            "params": self.params.to_dict(),
            "model_id": self.model_id,
            "model_hash": self.model_hash,
            "timings": self.timings,
            "provenance": self.provenance,
            "shape": list(self.counterfactual.shape),
            "dtype": str(self.counterfactual.dtype),
            "synthetic": True,
        }
