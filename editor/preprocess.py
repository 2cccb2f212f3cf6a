"""Stored pixels -> display [0, 1] -> model grid, and the exact way back.

Display chain (DICOM PS3.3 C.11): stored -> modality values (Modality LUT, else Rescale slope/intercept)
-> display values (VOI LUT, else Window Center/Width with VOI LUT Function LINEAR / LINEAR_EXACT /
SIGMOID, else a 0.5-99.5 % percentile window recorded as an explicit window) -> MONOCHROME1 inverted so
that bone is bright -> [0, 1].

Exactness of the inverse: for stored values whose modality value lies inside the window,
`to_stored(to_display(v)) == v` (the float32 display value keeps ~24 bits, far finer than one stored
unit for any window narrower than 2^22 units). Values outside the window saturate to the window edge;
with a VOI LUT table, values that share one table output come back as one of them. That loss only
matters inside the edit mask: the composite keeps the source's own stored pixels everywhere else.

Model grid and intensity: the model's input profile (editor/profiles.py) decides. `research` (the
published checkpoint): the display image is histogram-equalised (an exactly invertible monotone curve)
and squashed to resolution x resolution, ignoring the aspect ratio, as its MIMIC-CXR-JPG training images
were. `windowed-aspect` (this project's models): the display image as is; the shorter side becomes
`resolution`, the longer side is scaled by the same factor and rounded to a multiple of 8 (no padding;
the aspect ratio changes by < 4 px). Resizing uses Pillow on float32 images: "linear" = bilinear
(Pillow widens the filter when shrinking, so downsampling is antialiased), "area" = box filter,
"nearest" = nearest neighbour (for labels and boolean masks). The way back (`Preprocessed.to_display`)
is the inverse resize then the inverse intensity curve; the anatomy is segmented on the display image
on the model grid without the intensity curve (`anatomy_image`), so it does not depend on the profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from editor.profiles import PROJECT_PROFILE, Equalisation, InputProfile
from editor.types import SourceImage

if TYPE_CHECKING:
    import torch

__all__ = ["DisplayMapping", "GridTransform", "Preprocessed", "preprocess", "stored_range"]

ResizeOrder = Literal["linear", "nearest", "area"]

PERCENTILE_WINDOW = (0.5, 99.5)


def stored_range(bits_stored: int, signed: bool, dtype: np.dtype) -> tuple[int, int]:
    """Representable stored values for BitsStored/PixelRepresentation, within the array dtype."""
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        lo, hi = max(lo, int(info.min)), min(hi, int(info.max))
    return lo, hi


def _monotone(table: np.ndarray) -> bool:
    d = np.diff(table)
    return bool(np.all(d >= 0) or np.all(d <= 0))


def _invert_table(table: np.ndarray, first: int, values: np.ndarray) -> np.ndarray:
    """Input values (index + first) whose table output is nearest to `values` (float, unrounded)."""
    idx = np.arange(table.size, dtype=np.float64)
    if table.size == 1:
        return np.full(values.shape, float(first))
    if _monotone(table) and table[-1] != table[0]:
        if table[-1] < table[0]:  # decreasing table: reverse for np.interp
            return np.interp(values, table[::-1], idx[::-1]) + first
        return np.interp(values, table, idx) + first
    # Non-monotone table: nearest output (any of the ties) — the best a many-to-one table allows.
    order = np.argsort(table, kind="stable")
    sorted_t = table[order]
    pos = np.clip(np.searchsorted(sorted_t, values), 1, table.size - 1)
    left_closer = (values - sorted_t[pos - 1]) <= (sorted_t[pos] - values)
    return order[np.where(left_closer, pos - 1, pos)].astype(np.float64) + first


@dataclass(frozen=True, eq=False)
class DisplayMapping:
    """Stored -> display [0, 1] (bone bright) and its inverse, with the provenance of each step."""

    dtype: str
    bits_stored: int
    signed: bool
    invert: bool  # MONOCHROME1
    modality_kind: Literal["rescale", "lut"]
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: np.ndarray | None = None
    modality_lut_first: int = 0
    voi_kind: Literal["lut", "window", "percentile"] = "window"
    window_center: float = 0.0
    window_width: float = 1.0
    window_function: Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"] = "LINEAR"
    voi_lut: np.ndarray | None = None
    voi_lut_first: int = 0
    notes: tuple[str, ...] = ()

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_source(cls, src: SourceImage) -> DisplayMapping:
        notes: list[str] = []
        common: dict[str, Any] = dict(
            dtype=str(src.pixels.dtype), bits_stored=int(src.bits_stored), signed=bool(src.pixel_signed),
            invert=src.photometric == "MONOCHROME1",
        )
        if src.modality_lut is not None and src.modality_lut.size:
            common.update(modality_kind="lut", modality_lut=np.asarray(src.modality_lut, np.float64),
                          modality_lut_first=int(src.modality_lut_first_mapped))
        else:
            slope = float(src.rescale_slope) if src.rescale_slope else 1.0
            common.update(modality_kind="rescale", rescale_slope=slope,
                          rescale_intercept=float(src.rescale_intercept))
        partial = cls(**common)  # modality step only, to compute percentiles on modality values

        if src.voi_lut is not None and np.asarray(src.voi_lut).size > 1:
            table = np.asarray(src.voi_lut, np.float64)
            if _monotone(table) and table.max() > table.min():
                return cls(**common, voi_kind="lut", voi_lut=table, voi_lut_first=int(src.voi_lut_first_mapped))
            notes.append("VOI LUT ignored: not monotone or constant, so it has no inverse")
        width = src.window_width
        if width is not None and width > 0 and src.window_center is not None:
            function = (src.voi_lut_function or "LINEAR").upper()
            if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                notes.append(f"unknown VOI LUT Function {function!r}; used LINEAR")
                function = "LINEAR"
            return cls(**common, voi_kind="window", window_center=float(src.window_center),
                       window_width=float(width), window_function=function,  # type: ignore[arg-type]
                       notes=tuple(notes))
        modality = partial._to_modality(np.asarray(src.pixels))
        lo, hi = (float(v) for v in np.percentile(modality, PERCENTILE_WINDOW))
        if hi <= lo:
            hi = lo + 1.0
        notes.append(f"no VOI LUT or window: {PERCENTILE_WINDOW[0]}-{PERCENTILE_WINDOW[1]} % percentile window")
        # Recorded as an explicit LINEAR_EXACT window so the inverse is the same closed form.
        return cls(**common, voi_kind="percentile", window_center=(lo + hi) / 2, window_width=hi - lo,
                   window_function="LINEAR_EXACT", notes=tuple(notes))

    # -- forward ----------------------------------------------------------------------------------
    def _to_modality(self, stored: np.ndarray) -> np.ndarray:
        x = np.asarray(stored, dtype=np.float64)
        if self.modality_kind == "lut" and self.modality_lut is not None:
            idx = np.clip(np.rint(x) - self.modality_lut_first, 0, self.modality_lut.size - 1).astype(np.int64)
            return self.modality_lut[idx]
        return x * self.rescale_slope + self.rescale_intercept

    def _voi(self, m: np.ndarray) -> np.ndarray:
        if self.voi_kind == "lut" and self.voi_lut is not None:
            t = self.voi_lut
            idx = np.clip(np.rint(m) - self.voi_lut_first, 0, t.size - 1).astype(np.int64)
            return (t[idx] - t.min()) / (t.max() - t.min())
        c, w = self.window_center, self.window_width
        if self.window_function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (m - c) / w))
        if self.window_function == "LINEAR_EXACT":
            return np.clip((m - c) / w + 0.5, 0.0, 1.0)
        # LINEAR, PS3.3 C.11.2.1.2.1: the clipped line equals the piecewise definition.
        if w <= 1.0:
            return (m > c - 0.5).astype(np.float64)
        return np.clip((m - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)

    def to_display(self, stored: np.ndarray) -> np.ndarray:
        """Stored values -> float32 display in [0, 1], bone bright."""
        y = self._voi(self._to_modality(stored))
        if self.invert:
            y = 1.0 - y
        return y.astype(np.float32)

    # -- inverse ----------------------------------------------------------------------------------
    def _voi_inverse(self, y: np.ndarray) -> np.ndarray:
        if self.voi_kind == "lut" and self.voi_lut is not None:
            t = self.voi_lut
            return _invert_table(t, self.voi_lut_first, y * (t.max() - t.min()) + t.min())
        c, w = self.window_center, self.window_width
        if self.window_function == "SIGMOID":
            eps = 1e-12
            yc = np.clip(y, eps, 1.0 - eps)
            return c - (w / 4.0) * np.log(1.0 / yc - 1.0)
        if self.window_function == "LINEAR_EXACT":
            return (y - 0.5) * w + c
        if w <= 1.0:
            return np.where(y < 0.5, c - 1.0, c)
        return (y - 0.5) * (w - 1.0) + (c - 0.5)

    def _modality_inverse(self, m: np.ndarray) -> np.ndarray:
        if self.modality_kind == "lut" and self.modality_lut is not None:
            return _invert_table(self.modality_lut, self.modality_lut_first, m)
        return (m - self.rescale_intercept) / self.rescale_slope

    def to_stored(self, display01: np.ndarray) -> np.ndarray:
        """Display [0, 1] -> stored values in the source dtype, clipped to the stored range."""
        y = np.clip(np.asarray(display01, dtype=np.float64), 0.0, 1.0)
        if self.invert:
            y = 1.0 - y
        stored = np.rint(self._modality_inverse(self._voi_inverse(y)))
        dtype = np.dtype(self.dtype)
        lo, hi = stored_range(self.bits_stored, self.signed, dtype)
        return np.clip(stored, lo, hi).astype(dtype)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "photometric_inversion": self.invert,
            "dtype": self.dtype,
            "bits_stored": self.bits_stored,
            "signed": self.signed,
            "modality": self.modality_kind,
            "voi": self.voi_kind,
            "notes": list(self.notes),
        }
        if self.modality_kind == "rescale":
            d.update(rescale_slope=self.rescale_slope, rescale_intercept=self.rescale_intercept)
        else:
            d.update(modality_lut_entries=int(self.modality_lut.size) if self.modality_lut is not None else 0,
                     modality_lut_first=self.modality_lut_first)
        if self.voi_kind == "lut":
            d.update(voi_lut_entries=int(self.voi_lut.size) if self.voi_lut is not None else 0,
                     voi_lut_first=self.voi_lut_first)
        else:
            d.update(window_center=self.window_center, window_width=self.window_width,
                     window_function=self.window_function)
        return d


@dataclass(frozen=True)
class GridTransform:
    """Native grid <-> model grid: shorter side = resolution, longer side rounded to a multiple of 8, or
    (`square=True`, the research profile) resolution x resolution whatever the aspect ratio."""

    native_shape: tuple[int, int]
    model_shape: tuple[int, int]

    @classmethod
    def for_shape(cls, native_shape: tuple[int, int], resolution: int, *, square: bool = False) -> GridTransform:
        if resolution <= 0 or resolution % 8:
            raise ValueError(f"model resolution must be a positive multiple of 8, got {resolution}")
        h, w = int(native_shape[0]), int(native_shape[1])
        if h < 1 or w < 1:
            raise ValueError(f"empty image shape {native_shape}")
        if square:
            return cls((h, w), (resolution, resolution))
        scale = resolution / min(h, w)
        long_side = max(8, int(round(max(h, w) * scale / 8.0)) * 8)
        model = (resolution, long_side) if h <= w else (long_side, resolution)
        return cls((h, w), model)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.model_shape[0] // 8, self.model_shape[1] // 8)

    def to_model(self, arr_native: np.ndarray, *, order: ResizeOrder = "linear") -> np.ndarray:
        return _resize(arr_native, self.native_shape, self.model_shape, order)

    def to_native(self, arr_model: np.ndarray, *, order: ResizeOrder = "linear") -> np.ndarray:
        return _resize(arr_model, self.model_shape, self.native_shape, order)


def _resize(arr: np.ndarray, expect: tuple[int, int], shape: tuple[int, int], order: ResizeOrder) -> np.ndarray:
    """Resize a (H, W) or (C, H, W) array; linear/area give float32, nearest keeps the dtype."""
    from PIL import Image

    a = np.asarray(arr)
    if a.shape[-2:] != tuple(expect):
        raise ValueError(f"array of shape {a.shape} does not match the grid's {expect}")
    if a.ndim == 3:
        return np.stack([_resize(ch, expect, shape, order) for ch in a])
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D or 3-D array, got shape {a.shape}")
    resample = {"linear": Image.Resampling.BILINEAR, "area": Image.Resampling.BOX}.get(order)
    if a.shape == tuple(shape):
        out = a.astype(np.float32, copy=True) if order != "nearest" else a.copy()
        return out
    if order == "nearest":
        # Index arithmetic (pixel-centre sampling), not filtering: exact for any dtype, bool included.
        rows = np.minimum((np.arange(shape[0]) + 0.5) * a.shape[0] / shape[0], a.shape[0] - 1).astype(np.int64)
        cols = np.minimum((np.arange(shape[1]) + 0.5) * a.shape[1] / shape[1], a.shape[1] - 1).astype(np.int64)
        return a[np.ix_(rows, cols)]
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(img.resize((shape[1], shape[0]), resample=resample), dtype=np.float32)


@dataclass
class Preprocessed:
    display_native: np.ndarray  # float32 [0, 1] native grid, bone bright
    model_image: np.ndarray  # float32 (H, W) [0, 1] on the model grid, the profile's intensity
    grid: GridTransform
    mapping: DisplayMapping
    notes: list[str] = field(default_factory=list)
    profile: InputProfile = PROJECT_PROFILE
    equalisation: Equalisation | None = None  # the research profile's intensity curve (None: as is)
    anatomy_image: np.ndarray | None = None  # display on the model grid, no intensity curve

    def model_rgb_tensor(self) -> torch.Tensor:
        """(1, 3, H, W) float32 in [-1, 1], grey replicated (the pipeline needs 3 channels)."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(self.model_image, dtype=np.float32))
        return (t * 2.0 - 1.0)[None, None].expand(1, 3, *t.shape).contiguous()

    def to_display(self, model_gray: np.ndarray) -> np.ndarray:
        """A model-grid grey image in the profile's intensity -> native-grid display [0, 1]: the inverse
        resize, then the inverse intensity curve (the exact way back of `preprocess`)."""
        native = np.clip(self.grid.to_native(np.asarray(model_gray, dtype=np.float32), order="linear"), 0, 1)
        if self.equalisation is not None:
            native = self.equalisation.inverse(native)
        return np.asarray(native, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """The input transform, for provenance."""
        return {
            "profile": self.profile.name,
            "grid": (f"square {self.grid.model_shape[0]}x{self.grid.model_shape[1]} (aspect ignored)"
                     if self.profile.grid == "square" else
                     f"shorter side {min(self.grid.model_shape)}, aspect kept: {list(self.grid.model_shape)}"),
            "intensity": self.equalisation.describe() if self.equalisation is not None else "display image as is",
        }


def preprocess(src: SourceImage, resolution: int, profile: InputProfile = PROJECT_PROFILE) -> Preprocessed:
    """Stored pixels -> display [0, 1] -> the model's input as `profile` says (see the module docstring)."""
    mapping = DisplayMapping.from_source(src)
    display = mapping.to_display(src.pixels)
    grid = GridTransform.for_shape(src.shape, resolution, square=profile.grid == "square")
    anatomy_image = np.clip(grid.to_model(display, order="linear"), 0.0, 1.0).astype(np.float32)
    equalisation = None
    model_image = anatomy_image
    if profile.intensity == "equalise":
        equalisation = Equalisation.from_image(display)
        model_image = np.clip(grid.to_model(equalisation.forward(display), order="linear"), 0.0, 1.0)
        model_image = model_image.astype(np.float32)
    return Preprocessed(display, model_image, grid, mapping, list(mapping.notes), profile, equalisation,
                        anatomy_image)
