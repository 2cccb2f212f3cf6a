"""The figure grid: for a sample of rows, source | real current | per method: counterfactual, guidance map.

The guidance map is shown as the research code shows it: pure red of intensity G where G >= tau, the
grey source elsewhere. Thumbnails are squashed to squares (the paper's 512 x 512 display); the image is
labelled SYNTHETIC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from editor.display import guidance_overlay

__all__ = ["FigureRow", "write_grid"]

THUMB = 160
HEADER = 34
LABEL_ROW = 14


@dataclass
class FigureRow:
    title: str  # the instruction
    source: np.ndarray  # display [0, 1]
    current: np.ndarray | None
    panels: list[tuple[np.ndarray | None, np.ndarray | None, float]]  # per method: (cf, guidance, tau)


def _thumb(arr: np.ndarray | None) -> object:
    from PIL import Image

    if arr is None:
        return Image.new("RGB", (THUMB, THUMB), (40, 40, 40))
    if arr.ndim == 2:
        arr = np.stack([np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)] * 3, axis=-1)
    return Image.fromarray(arr.astype(np.uint8)).resize((THUMB, THUMB), Image.Resampling.BILINEAR)


def write_grid(path: Path, rows: Sequence[FigureRow], method_names: Sequence[str]) -> Path:
    """Columns: source, real current, then `<method> cf` (counterfactual) and `<method> G` (guidance map)."""
    from PIL import Image, ImageDraw

    columns = ["source", "real current"] + [f"{name[:20]} {kind}" for name in method_names for kind in ("cf", "G")]
    width, height = THUMB * len(columns), HEADER + len(rows) * (THUMB + LABEL_ROW)
    canvas = Image.new("RGB", (width, max(height, HEADER + 1)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), "SYNTHETIC counterfactuals (x2x reproduce) - not for diagnosis", fill=(255, 200, 0))
    for c, name in enumerate(columns):
        draw.text((c * THUMB + 3, 18), name, fill=(220, 220, 220))
    for r, row in enumerate(rows):
        y = HEADER + r * (THUMB + LABEL_ROW)
        draw.text((3, y), row.title[:160], fill=(180, 220, 255))
        tiles = [row.source, row.current]
        for cf, guidance, tau in row.panels:
            tiles.append(cf)
            tiles.append(None if guidance is None else guidance_overlay(row.source, guidance, tau))
        for c, tile in enumerate(tiles):
            canvas.paste(_thumb(tile), (c * THUMB, y + LABEL_ROW))  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
