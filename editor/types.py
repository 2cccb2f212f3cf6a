"""The data that crosses the seam `Editor.edit(image, instruction, *, seed, params) -> EditResult`.

`SourceImage` carries a stored pixel array plus the few DICOM facts the editor needs; the editor never
sees a network or a PACS. `EditResult` carries arrays on the source's native grid plus provenance.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class EditParams:
    """All knobs of one edit, with the paper's defaults. Every field goes into the provenance."""

    steps: int = 100  # DDIM inference steps (pinned schedule: timesteps 991 ... 1 of 1000 training steps)
    text_guidance: float = 7.5  # s_T
    image_guidance: float = 1.5  # s_I
    tau: float = 0.1  # guidance threshold; 0 = no RSE (plain IP2P)
    rse: bool = True  # False = plain InstructPix2Pix (same as tau = 0)
    relevance_timestep: int = 800  # noise level of the relevance map (0.8 x 1000)
    relevance_samples: int = 1  # K noise draws averaged (K = 1 reproduces the paper)
    # "source": research code, source latents noised to the first timestep with one noise tensor;
    # "noise": pure noise start, as diffusers' StableDiffusionInstructPix2PixPipeline.
    start: Literal["source", "noise"] = "source"
    # "current": research code, blend with the original noised to the step's current t (default, paper);
    # "next": corrected, noised to the level the latents sit at after the step.
    blend_timestep: Literal["current", "next"] = "current"
    prior: Literal["anatomy", "paper", "none"] = "anatomy"
    paper_prior_dir: str | None = None  # folder of pseudo_mask_<Finding>.npy (prior="paper")
    mask_cleanup: bool = True  # small morphological opening/closing of the binary mask
    feather_px: int = 4  # composite edge feathering at native resolution
    resolution: int | None = None  # None = the model's own resolution (the input profile sets the grid)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> EditParams:
        return dataclasses.replace(self, **changes)


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
