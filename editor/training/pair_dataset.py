"""The training pairs as tensors: `PairDataset` turns (past image, current image, instruction) rows into
3-channel tensors in [-1, 1] (or their cached latent moments) and tokenized captions. Also the image
loading it uses (grayscale PNG at the training resolution; the research config's rotation: resized
1/(cos a + sin a) larger, rotated, centre-cropped) and the laterality-word swap for flipped images."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from editor.training.format import Sample, image_path

if TYPE_CHECKING:
    import torch


_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_laterality_words(text: str) -> str:
    """'left' <-> 'right' (case kept): the instruction that matches a horizontally flipped image."""

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _SIDE.sub(swap, text)


def load_gray(path: Path, resolution: int) -> np.ndarray:
    """8/16-bit grayscale PNG -> float32 (res, res) in [0, 1] (bilinear resize when needed)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
        if arr.ndim == 3:  # an RGB(A) export of a grayscale image: take luminance
            arr = np.asarray(im.convert("L"))
        scale = 65535.0 if arr.dtype == np.uint16 else 255.0
        img = arr.astype(np.float32) / scale
    if img.shape != (resolution, resolution):
        img = np.asarray(
            Image.fromarray(img, mode="F").resize((resolution, resolution), Image.Resampling.BILINEAR)
        )
    return img


def rotation_margin(degrees: float) -> float:
    """How much larger an image must be so that its centre crop survives a rotation by +-degrees without
    rotated-in corners: 1 / (cos a + sin a)."""
    a = math.radians(abs(float(degrees)))
    return 1.0 / (math.cos(a) + math.sin(a))


def load_rotated(path: Path, resolution: int, angle: float, max_degrees: float) -> np.ndarray:
    """The image resized 1/margin(max_degrees) larger, rotated by `angle` about its centre (bilinear),
    centre-cropped to (resolution, resolution). The enlargement depends on the largest angle only, so
    every sample has the same scale whatever its own angle."""
    from PIL import Image

    big = int(math.ceil(resolution / rotation_margin(max_degrees)))
    big += (big - resolution) % 2  # an even border on each side
    img = load_gray(path, big)
    if angle:
        img = np.asarray(Image.fromarray(img, mode="F").rotate(angle, resample=Image.Resampling.BILINEAR))
    off = (big - resolution) // 2
    return np.ascontiguousarray(img[off: off + resolution, off: off + resolution])


def image_tensor(a: np.ndarray) -> torch.Tensor:
    """(H, W) in [0, 1] -> (3, H, W) in [-1, 1]: grayscale replicated to RGB, as the VAE expects."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a) * 2.0 - 1.0)
    return t.unsqueeze(0).expand(3, -1, -1)


class PairDataset:
    """(past image, current image, instruction) triples as 3-channel tensors in [-1, 1] -- or, with
    `moments` (dicom id -> the VAE's latent mean and log-variance, from `encode_moments`), the two
    images' cached latent moments instead of their pixels."""

    def __init__(self, dataset_dir: Path, samples: list[Sample], resolution: int, tokenizer: Any,
                 moments: dict[str, torch.Tensor] | None = None, rotation_degrees: float = 0.0) -> None:
        self.dir, self.samples, self.resolution, self.tokenizer = dataset_dir, samples, resolution, tokenizer
        self.moments = moments
        self.rotation_degrees = float(rotation_degrees)
        missing = [
            d for s in samples for d in (s.past_dicom_id, s.current_dicom_id)
            if not image_path(dataset_dir, d).exists()
        ]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) missing under {dataset_dir}/images, e.g. {missing[0]}.png"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, bool] | tuple[int, bool, float]) -> dict[str, Any]:
        index, flip = key[0], key[1]
        angle = float(key[2]) if len(key) > 2 else 0.0
        s = self.samples[index]
        if self.moments is not None:
            if flip or angle:
                raise ValueError("cached latents cannot be flipped or rotated (cache_latents with hflip or "
                                 "rotation is refused)")
            return {"past_moments": self.moments[s.past_dicom_id],
                    "current_moments": self.moments[s.current_dicom_id], "text": s.instruction}
        if self.rotation_degrees > 0:  # one angle for both images of the pair
            past = load_rotated(image_path(self.dir, s.past_dicom_id), self.resolution, angle,
                                self.rotation_degrees)
            current = load_rotated(image_path(self.dir, s.current_dicom_id), self.resolution, angle,
                                   self.rotation_degrees)
        else:
            past = load_gray(image_path(self.dir, s.past_dicom_id), self.resolution)
            current = load_gray(image_path(self.dir, s.current_dicom_id), self.resolution)
        text = s.instruction
        if flip:
            past, current = past[:, ::-1], current[:, ::-1]
            text = swap_laterality_words(text)
        return {"past": image_tensor(past), "current": image_tensor(current), "text": text}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = self.tokenizer(
            [it["text"] for it in items], max_length=tokenizer_max_length(self.tokenizer), padding="max_length",
            truncation=True, return_tensors="pt",
        ).input_ids
        tensors = [k for k in items[0] if k != "text"]
        return {**{k: torch.stack([it[k] for it in items]).contiguous() for k in tensors}, "input_ids": ids}


def tokenizer_max_length(tokenizer: Any) -> int:
    n = int(getattr(tokenizer, "model_max_length", 77) or 77)
    return 77 if n > 10_000 else n  # transformers 5 reports 1e30 when the config does not say
