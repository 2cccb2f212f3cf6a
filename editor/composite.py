"""Composite the decoded edit into the source at native resolution, in the stored-value domain.

The feathered alpha ramps *inward* from the mask's edge (alpha = d / (feather_px + 1), d = distance to
the nearest pixel outside the mask, capped at 1), so alpha is exactly 0 everywhere outside the binary
mask M: every pixel outside M keeps the source's stored value bit for bit, and the mask that the node
exports as "where the edit was allowed" is exactly the set of pixels that may differ.

Only the pixels inside M are computed: the distance transform runs on the tiles along the mask's edge
(deeper pixels have alpha 1, outside pixels 0), and the edit is mapped to stored values and blended
only where alpha > 0. The result is identical to computing every pixel (tests/test_editor.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Tile side of the edge-band distance transform; larger than any sensible feather (the halo is
# feather_px + 1 pixels, and a tile's 3x3 neighbourhood must contain its halo).
_TILE = 64


def _tile_flags(inside: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Per tile: any pixel inside the mask, any pixel outside it (partial edge tiles included)."""
    rows, cols = inside.shape
    ny, nx = -(-rows // tile), -(-cols // tile)
    padded = np.zeros((ny * tile, nx * tile), dtype=bool)
    padded[:rows, :cols] = inside
    has_in = np.asarray(padded.reshape(ny, tile, nx, tile).any(axis=(1, 3)))
    padded[:rows, :cols] = ~inside
    has_out = np.asarray(padded.reshape(ny, tile, nx, tile).any(axis=(1, 3)))
    return has_in, has_out


def feather_alpha(mask: np.ndarray, feather_px: int) -> np.ndarray:
    """float32 alpha in [0, 1]: 0 outside `mask`, ramping up to 1 within `feather_px` of its edge."""
    from scipy import ndimage

    inside = np.asarray(mask, dtype=bool)
    if not inside.any():
        return np.zeros(inside.shape, dtype=np.float32)
    if inside.all() or feather_px <= 0:
        return inside.astype(np.float32)
    reach = int(feather_px) + 1  # alpha < 1 only where the nearest outside pixel is closer than this
    tile = max(_TILE, 2 * reach)
    alpha = inside.astype(np.float32)  # 1 inside, 0 outside; the edge band is filled in below
    has_in, has_out = _tile_flags(inside, tile)
    # A tile needs distances if it has mask pixels and an outside pixel in it or a neighbouring tile.
    near_out = ndimage.binary_dilation(has_out, structure=np.ones((3, 3), dtype=bool))
    rows, cols = inside.shape
    for ty, tx in np.argwhere(has_in & near_out):
        y0, x0 = int(ty) * tile, int(tx) * tile
        y1, x1 = min(rows, y0 + tile), min(cols, x0 + tile)
        # The halo stops at the image border: the border is not an edge (as for the whole image).
        by0, bx0 = max(0, y0 - reach), max(0, x0 - reach)
        block = inside[by0 : min(rows, y1 + reach), bx0 : min(cols, x1 + reach)]
        if block.all():
            continue
        # Exact within reach: a pixel at distance d < reach has its nearest outside pixel inside the halo;
        # farther pixels get a distance >= reach here too, i.e. alpha 1 either way.
        depth = ndimage.distance_transform_edt(block)[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        ramp = np.clip(depth / (feather_px + 1.0), 0.0, 1.0).astype(np.float32)
        alpha[y0:y1, x0:x1] = np.where(inside[y0:y1, x0:x1], ramp, np.float32(0.0))
    return alpha


def blend_at(source: np.ndarray, where: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The source with source + alpha (edited - source), rounded to the source dtype, at the pixels
    `where`; `edited` and `alpha` hold the values of those pixels only (in `source[where]` order)."""
    out = source.copy()
    src = source[where].astype(np.float64)
    mixed = src + alpha.astype(np.float64) * (edited.astype(np.float64) - src)
    if np.issubdtype(source.dtype, np.integer):
        info = np.iinfo(source.dtype)
        mixed = np.clip(np.rint(mixed), info.min, info.max)
    out[where] = mixed.astype(source.dtype)
    return out


def blend_stored(source: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """source + alpha (edited - source), rounded to the source dtype; exactly `source` where alpha == 0."""
    if source.shape != edited.shape or source.shape != alpha.shape:
        raise ValueError(f"shape mismatch: source {source.shape}, edited {edited.shape}, alpha {alpha.shape}")
    where = alpha > 0
    return blend_at(source, where, edited[where], alpha[where])


def composite(
    source: np.ndarray,
    edited_display: np.ndarray,
    mask: np.ndarray,
    feather_px: int,
    to_stored: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The counterfactual's stored values: the edit (display values in [0, 1] on the native grid, mapped
    to stored values by `to_stored`) blended into `source` with the feathered alpha of `mask`."""
    alpha = feather_alpha(mask, feather_px)
    where = alpha > 0
    edited = to_stored(np.clip(edited_display[where], 0.0, 1.0))
    return blend_at(source, where, edited, alpha[where])


def native_mask(mask_model: np.ndarray, to_native: Callable[..., np.ndarray]) -> np.ndarray:
    """Binary model-grid mask -> native grid (`to_native` = GridTransform.to_native): linear, >= 0.5."""
    interpolated = to_native(np.asarray(mask_model, dtype=np.float32), order="linear")
    return np.asarray(interpolated) >= 0.5
