"""Input profiles: how a model was trained to see images, declared by the model folder.

A diffusion model only behaves as trained when it is fed images the way it was trained. The model
folder's `x2x_model.json` says which profile it expects (`"input_profile": "..."`):

* `research` — the published InstructX2X checkpoint: trained on MIMIC-CXR-JPG (histogram-equalised 8-bit
  JPGs) squashed to 512x512, and the research inference multiplies fixed 512x512 masks with the map, so
  it only works on square inputs. The display image is histogram-equalised (`Equalisation`) and resized
  to a square of the model's resolution, ignoring the aspect ratio. On CUDA the UNet runs in float16
  (bfloat16 only when asked), with the latent state and the relevance arithmetic in float32, as the
  research code does. **A diffusers folder that declares nothing gets this profile.**
* `windowed-aspect` — this project's own models (the phantom demo model, the tiny fixture): the DICOM
  display image (VOI window) as it is, shorter side = the resolution, aspect ratio kept (longer side
  rounded to a multiple of 8). On CUDA float16 as well: a bfloat16 UNet made the demo model's relevance
  map correlate only 0.885 with float32 (float16: 0.998) -- bfloat16 stays available by choice.

Both are exactly invertible where it matters: the composite maps the decoded edit back through the
inverse resize and the inverse intensity mapping, and pixels outside the mask are the source's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROJECT_PROFILE",
    "RESEARCH_PROFILE",
    "Equalisation",
    "InputProfile",
    "get_profile",
]


@dataclass(frozen=True)
class InputProfile:
    name: str
    grid: Literal["square", "aspect"]  # square: resolution x resolution; aspect: shorter side = resolution
    intensity: Literal["equalise", "display"]  # histogram equalisation of the display image, or as is
    cuda_dtype: Literal["float16", "bfloat16"]  # default UNet dtype on CUDA ("auto")
    description: str

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "grid": self.grid, "intensity": self.intensity,
                "cuda_dtype": self.cuda_dtype, "latent_state": "float32", "relevance_arithmetic": "float32",
                "description": self.description}


RESEARCH_PROFILE = InputProfile(
    name="research",
    grid="square",
    intensity="equalise",
    cuda_dtype="float16",
    description=("as the published InstructX2X checkpoint was trained: display image histogram-equalised "
                 "(like MIMIC-CXR-JPG) and squashed to a square of the model resolution (aspect ignored); "
                 "float16 UNet on CUDA, float32 latents and relevance"),
)
PROJECT_PROFILE = InputProfile(
    name="windowed-aspect",
    grid="aspect",
    intensity="display",
    cuda_dtype="float16",
    description=("this project's models: the DICOM display image (VOI window) as is, shorter side = the "
                 "model resolution, aspect kept (longer side a multiple of 8); float16 UNet on CUDA, float32 "
                 "latents and relevance"),
)
PROFILES: dict[str, InputProfile] = {p.name: p for p in (RESEARCH_PROFILE, PROJECT_PROFILE)}
DEFAULT_PROFILE = RESEARCH_PROFILE.name  # a folder without a declaration: the published checkpoint


def get_profile(name: str | None) -> InputProfile:
    """The profile of that name (None = the default for an undeclared folder); unknown -> ValueError."""
    key = DEFAULT_PROFILE if name is None else str(name).strip()
    try:
        return PROFILES[key]
    except KeyError:
        raise ValueError(f"unknown input_profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


# Histogram bins of the equalisation: MIMIC-CXR-JPG equalised 8-bit images (256 levels); 4096 bins of the
# float display image give the same curve, finer, and keep it exactly invertible.
EQUALISATION_BINS = 4096
# A small share of the identity keeps the curve strictly increasing (empty bins would make it flat and
# its inverse undefined); 0.1 % moves no output by more than 1/1000 of the range.
_IDENTITY_SHARE = 1e-3


@dataclass(frozen=True, eq=False)
class Equalisation:
    """Histogram equalisation as a monotone, strictly increasing, piecewise-linear curve y = f(x) on
    [0, 1] (the normalised cumulative histogram of the display image), with its exact inverse.

    Built from the native display image (every pixel), as MIMIC-CXR-JPG equalised whole images."""

    knots_x: np.ndarray  # (B + 1,) bin edges 0 .. 1
    knots_y: np.ndarray  # (B + 1,) strictly increasing 0 .. 1

    @classmethod
    def from_image(cls, display01: np.ndarray, bins: int = EQUALISATION_BINS) -> Equalisation:
        values = np.clip(np.asarray(display01, dtype=np.float64).ravel(), 0.0, 1.0)
        hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
        cdf = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)])
        # The continuous cumulative histogram: the darkest pixel maps to ~0, the brightest to 1.
        cdf /= max(cdf[-1], 1.0)
        curve = (1.0 - _IDENTITY_SHARE) * cdf + _IDENTITY_SHARE * edges
        return cls(edges, curve)

    def forward(self, display01: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(display01, dtype=np.float64), 0.0, 1.0)
        return np.interp(x, self.knots_x, self.knots_y).astype(np.float32)

    def inverse(self, equalised01: np.ndarray) -> np.ndarray:
        y = np.clip(np.asarray(equalised01, dtype=np.float64), 0.0, 1.0)
        return np.interp(y, self.knots_y, self.knots_x).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "histogram equalisation of the display image", "bins": int(self.knots_x.size - 1),
                "identity_share": _IDENTITY_SHARE, "inverse": "exact (piecewise-linear, strictly increasing)"}
