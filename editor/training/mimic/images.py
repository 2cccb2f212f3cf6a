"""The dataset's images: each chosen MIMIC-CXR-JPG image as an 8-bit grayscale PNG at `image_size`
("squash", "pad" or "crop" to the square), written atomically, in parallel, skipping those present."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from editor.training.format import image_path
from editor.training.mimic.sources import Image, jpg_path
from editor.training.mimic.stats import BuildStats

Fit = Literal["squash", "pad", "crop"]


def write_dataset_images(needed: dict[str, Image], jpg_root: Path, out: Path, size: int, fit: Fit,
                         workers: int, stats: BuildStats) -> None:
    (out / "images").mkdir(exist_ok=True)
    todo = [img for did, img in sorted(needed.items()) if not image_path(out, did).exists()]
    stats.images_existing = len(needed) - len(todo)

    def one(img: Image) -> None:
        prepare_image(jpg_path(jpg_root, img), image_path(out, img.dicom_id), size, fit)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, todo))
    stats.images_written = len(todo)


def prepare_image(src: Path, dst: Path, size: int, fit: Fit = "squash") -> None:
    """A MIMIC-CXR-JPG image -> `size`x`size` 8-bit grayscale PNG (written atomically)."""
    from PIL import Image as PILImage

    with PILImage.open(src) as im:
        gray = im.convert("L")
        w, h = gray.size
        if fit == "squash":
            res = gray.resize((size, size), PILImage.Resampling.BILINEAR)
        elif fit == "crop":
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            res = gray.crop(box).resize((size, size), PILImage.Resampling.BILINEAR)
        elif fit == "pad":
            scale = size / max(w, h)
            inner = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))), PILImage.Resampling.BILINEAR)
            res = PILImage.new("L", (size, size), 0)
            res.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
        else:
            raise ValueError(f"unknown fit {fit!r} (squash, pad, crop)")
    tmp = dst.with_suffix(".tmp.png")
    res.save(tmp)
    tmp.replace(dst)
