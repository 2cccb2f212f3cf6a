"""`cache_latents=True`: every image encoded once before training, its VAE latent moments (mean and
log-variance) kept in memory and in `<output_dir>/latent_cache.pt`; each step then samples the target
latent from them with the step's own generator, as the uncached path does from a fresh encoding. It
saves the two VAE encodings per sample, at 2 x latent size of memory per image: meant for small
datasets such as the phantoms, not MIMIC-CXR at 512 px."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editor.training.format import Sample, image_path
from editor.training.pair_dataset import image_tensor, load_gray
from editor.training.run_folder import LATENT_CACHE
from editor.training.train_config import TrainConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger("x2x.train")


def encode_moments(vae: Any, dataset_dir: Path, samples: list[Sample], resolution: int, device: Any, *,
                   chunk: int = 64) -> dict[str, torch.Tensor]:
    """dicom id -> the VAE posterior's parameters (mean and log-variance stacked on the channel axis, as
    diffusers' DiagonalGaussianDistribution holds them), on the CPU in float32."""
    import torch

    ids = sorted({d for s in samples for d in (s.past_dicom_id, s.current_dicom_id)})
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            x = torch.stack([image_tensor(load_gray(image_path(dataset_dir, d), resolution)) for d in part])
            params = vae.encode(x.to(device, dtype=vae.dtype)).latent_dist.parameters.float().cpu()
            out.update(zip(part, params, strict=True))
    return out


def cached_moments(cfg: TrainConfig, base: Path, out: Path, vae: Any, samples: list[Sample],
                   device: Any) -> dict[str, torch.Tensor]:
    """The latent moments of every image, kept in `<output_dir>/latent_cache.pt` so that a resumed run
    (or the next chunk of one) does not encode again; reused only for the same VAE, resolution and ids."""
    import torch

    vae_files = sorted((base / "vae").glob("*.safetensors")) or sorted((base / "vae").glob("*.bin"))
    digest = hashlib.sha256()
    for f in vae_files:
        digest.update(f.read_bytes())
    ids = sorted({d for s in samples for d in (s.past_dicom_id, s.current_dicom_id)})
    key = {"vae_sha256": digest.hexdigest(), "resolution": cfg.resolution, "dtype": str(vae.dtype),
           "dataset": str(Path(cfg.dataset_dir).resolve()),
           "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    path = out / LATENT_CACHE
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            log.info("latent cache: reusing %d images from %s", len(stored["moments"]), path)
            return dict(stored["moments"])
    t0 = time.monotonic()
    moments = encode_moments(vae, Path(cfg.dataset_dir), samples, cfg.resolution, device)
    log.info("latent cache: encoded %d images in %.1f s", len(moments), time.monotonic() - t0)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several processes may write it at once
    torch.save({"key": key, "moments": moments}, tmp)
    tmp.replace(path)
    return moments
