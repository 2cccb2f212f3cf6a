"""How the research code shows a guidance map: pure red of intensity G where G >= tau, the grey image
elsewhere (with tau = 0, wherever G > 0). Used by `x2x edit`'s guidance_overlay.png and the figures of
`x2x reproduce`."""

from __future__ import annotations

import numpy as np


def to_uint8(display01: np.ndarray) -> np.ndarray:
    """Display values in [0, 1] -> uint8 0..255 (rounded, clipped)."""
    return np.asarray(np.clip(np.rint(np.asarray(display01, dtype=np.float64) * 255), 0, 255), dtype=np.uint8)


def guidance_overlay(grey01: np.ndarray, guidance: np.ndarray, tau: float) -> np.ndarray:
    """RGB uint8 (rows, cols, 3): red of intensity G where G >= tau, the grey image elsewhere."""
    grey = to_uint8(grey01)
    rgb = np.stack([grey] * 3, axis=-1)
    shown = np.asarray(guidance) >= max(float(tau), 1e-6)
    rgb[shown] = 0
    rgb[..., 0][shown] = to_uint8(guidance)[shown]
    return rgb
