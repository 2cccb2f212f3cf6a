"""torchxrayvision's pathology, race and age classifiers, loaded from a local folder only.

The folder (filled once by the user; see docs/research.md) holds the files torchxrayvision itself
downloads into `~/.torchxrayvision/models_data/`, under their release names (editor/evaluation/xrv_weights.py):

    <folder>/nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt
    <folder>/resnet_race_detection_val-loss_0.157_mimic_public.pt
    <folder>/baseline_models_riken_xray_age_every_model_age_senet154_v2_tl_26_ft_7_fp32.pt

Nothing is downloaded. Input convention (torchxrayvision's): a display image in [0, 1] (bone bright) is
centre-cropped to a square (`XRayCenterCrop`), resized bilinearly with antialiasing to the model's
resolution (`fix_resolution`) and scaled to [-1024, 1024]. The pathology DenseNet takes that one channel
and its outputs go through sigmoid + the file's operating-point normalisation (`op_norm`), so >= 0.5 is
positive. The race and age models take it repeated to 3 channels, mapped back to [0, 1] and normalised
with the ImageNet mean / std, at 320 x 320.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from editor.evaluation.checkpoints import CheckpointError, load_into, load_state_dict
from editor.evaluation.nets import DenseNet121, race_resnet34
from editor.evaluation.xrv_weights import (
    AGE_FILE,
    BASELINE_RESOLUTION,
    DEFAULT_PATHOLOGY_WEIGHTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PATHOLOGY_WEIGHTS,
    RACE_FILE,
    RACE_LABELS,
    XRV_LABELS,
    PathologyWeights,
)

__all__ = ["ClassifierError", "XrvClassifiers", "op_norm", "to_xrv_tensor"]


class ClassifierError(FileNotFoundError):
    """The classifier folder lacks a file (the message says which and where it comes from)."""


def _missing(folder: Path, filename: str, what: str) -> ClassifierError:
    return ClassifierError(
        f"{folder / filename} not found: the {what} weights. Copy torchxrayvision's release file "
        f"{filename!r} (from ~/.torchxrayvision/models_data/ of any machine that ran torchxrayvision, or its "
        f"GitHub release v1) into {folder}; nothing is downloaded at run time (docs/research.md)."
    )


def to_xrv_tensor(display01: np.ndarray, resolution: int) -> torch.Tensor:
    """(1, 1, r, r) float32 in [-1024, 1024]: centre square crop, bilinear antialiased resize, xrv scale."""
    img = np.asarray(display01, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    h, w = img.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    x = torch.from_numpy(np.ascontiguousarray(img[top: top + side, left: left + side]))[None, None]
    if side != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 2.0 - 1.0) * 1024.0


def op_norm(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """torchxrayvision's operating-point normalisation: p < t -> p / 2t, else 1 - (1 - p) / 2(1 - t);
    labels without a threshold (NaN) stay 0.5."""
    t = thresholds.expand_as(probs)
    valid = ~torch.isnan(t)
    below = (probs < t) & valid
    above = ~(probs < t) & valid
    out = torch.full_like(probs, 0.5)
    out[below] = probs[below] / (t[below] * 2)
    out[above] = 1.0 - (1.0 - probs[above]) / ((1.0 - t[above]) * 2)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class XrvClassifiers:
    """The three classifiers; each call takes a list of display images [0, 1] and returns numpy arrays."""

    pathology_net: DenseNet121
    pathology_weights: PathologyWeights
    race_net: torch.nn.Module
    age_net: Any  # a TorchScript module
    files: dict[str, str] = field(default_factory=dict)  # role -> path
    hashes: dict[str, str] = field(default_factory=dict)  # role -> sha256
    batch_size: int = 8
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_size: int = 50_000  # images (about 4 KB each)
    _cache: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_folder(cls, folder: str | Path, *, pathology: str = DEFAULT_PATHOLOGY_WEIGHTS,
                    device: str = "cpu") -> XrvClassifiers:
        folder = Path(folder)
        if not folder.is_dir():
            raise ClassifierError(f"{folder}: the classifier folder does not exist (docs/research.md)")
        if pathology not in PATHOLOGY_WEIGHTS:
            raise ValueError(f"unknown pathology weights {pathology!r}; choose one of {', '.join(PATHOLOGY_WEIGHTS)}")
        weights = PATHOLOGY_WEIGHTS[pathology]
        paths = {"pathology": folder / weights.filename, "race": folder / RACE_FILE, "age": folder / AGE_FILE}
        for role, what in (("pathology", f"pathology DenseNet ({pathology})"), ("race", "race ResNet-34"),
                           ("age", "age SENet-154 (TorchScript)")):
            if not paths[role].is_file():
                raise _missing(folder, paths[role].name, what)
        dev = torch.device(device)
        dense = DenseNet121(in_channels=1, num_classes=len(XRV_LABELS))
        load_into(dense, load_state_dict(paths["pathology"]), str(paths["pathology"]))
        race = race_resnet34()
        load_into(race, load_state_dict(paths["race"]), str(paths["race"]))
        try:
            age = torch.jit.load(str(paths["age"]), map_location=dev)
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{paths['age']}: not a TorchScript archive ({exc})") from exc
        for net in (dense, race, age):
            net.eval()
        return cls(dense.to(dev), weights, race.to(dev), age, {k: str(v) for k, v in paths.items()},
                   {k: file_sha256(v) for k, v in paths.items()}, device=dev)

    # ----------------------------------------------------------------------------------------- calls
    # All four outputs of an image are computed together and cached by the image's content: the same
    # past image serves several rows (one pair gives several instructions), an unchanged counterfactual
    # is its source, and FID reads back the very images that were scored.

    def _baseline_input(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.repeat(1, 3, 1, 1) + 1024.0) / 2048.0
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @staticmethod
    def _key(image: np.ndarray) -> str:
        arr = np.ascontiguousarray(image, dtype=np.float32)
        return hashlib.sha1(repr(arr.shape).encode() + arr.tobytes()).hexdigest()

    @torch.inference_mode()
    def _compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        thresholds = torch.tensor(self.pathology_weights.op_threshs, dtype=torch.float32, device=self.device)
        untrained = [not t for t in self.pathology_weights.trained]
        out: list[dict[str, np.ndarray]] = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i: i + self.batch_size]
            res = self.pathology_weights.resolution
            dense_in = torch.cat([to_xrv_tensor(img, res) for img in chunk]).to(self.device)
            feats = self.pathology_net.features2(dense_in)
            logits = self.pathology_net.classifier(feats)
            probs = op_norm(torch.sigmoid(logits), thresholds[None]).double().cpu().numpy()
            probs[:, untrained] = math.nan
            base_in = self._baseline_input(
                torch.cat([to_xrv_tensor(img, BASELINE_RESOLUTION) for img in chunk]).to(self.device))
            race = self.race_net(base_in).exp().double().cpu().numpy()
            age = self.age_net(base_in).reshape(-1).double().cpu().numpy()
            feats_np = feats.float().cpu().numpy()
            out += [{"pathology": probs[j], "race": race[j], "age": np.asarray(age[j]), "features": feats_np[j]}
                    for j in range(len(chunk))]
        return out

    def _scores(self, images: Sequence[np.ndarray], what: str) -> np.ndarray:
        keys = [self._key(img) for img in images]
        todo = {k: img for k, img in zip(keys, images, strict=True) if k not in self._cache}
        if todo:
            if len(self._cache) + len(todo) > self.cache_size:
                self._cache.clear()
            self._cache.update(zip(todo, self._compute(list(todo.values())), strict=True))
        return np.stack([np.asarray(self._cache[k][what], dtype=np.float64) for k in keys])

    def pathology(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 18) operating-point-normalised probabilities in XRV_LABELS order (NaN: label not trained)."""
        return self._scores(images, "pathology") if images else np.zeros((0, len(XRV_LABELS)))

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 1024) pooled DenseNet features (the FID feature space of this project)."""
        return self._scores(images, "features") if images else np.zeros((0, self.pathology_net.num_features))

    def race(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 3) probabilities over RACE_LABELS."""
        return self._scores(images, "race") if images else np.zeros((0, len(RACE_LABELS)))

    def age(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N,) predicted age in years."""
        return self._scores(images, "age").reshape(-1) if images else np.zeros((0,))

    def describe(self) -> dict[str, Any]:
        return {"pathology_weights": self.pathology_weights.name, "files": self.files, "sha256": self.hashes,
                "race_labels": list(RACE_LABELS), "input": "centre crop, bilinear antialiased resize, [-1024, 1024]"}
