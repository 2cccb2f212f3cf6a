"""A small AutoencoderKL trained as a plain autoencoder on phantoms (the demo model's VAE).

A random VAE decodes garbage, so the phantom demo model needs its own: 4 blocks (8x downsampling, as
Stable Diffusion's, so a 128-px image gives 16x16 latents; the first blocks are narrow because they run
at full resolution, where a CPU spends its time), a reconstruction loss (L1) and a tiny KL weight that
keeps the latent distribution well-behaved without blurring. After training the latent scaling factor is set to
1 / std of the latents, as Stable Diffusion's 0.18215 was, so the diffusion model sees unit variance.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger("x2x.train.vae")


@dataclass(frozen=True)
class VAEConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)  # 4 blocks: 8x downsampling
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 8
    resolution: int = 128
    steps: int = 1500
    batch_size: int = 8
    learning_rate: float = 5e-4
    kl_weight: float = 1e-6
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_vae(cfg: VAEConfig) -> Any:
    """A freshly initialised AutoencoderKL for grayscale-replicated-to-RGB images (seeded)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=cfg.latent_channels,
        block_out_channels=cfg.block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.resolution,
    )


def load_images(paths: list[Path], resolution: int) -> np.ndarray:
    """PNG files -> uint8 (N, res, res) grayscale (resized bilinearly when needed)."""
    from PIL import Image

    out = np.empty((len(paths), resolution, resolution), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as opened:
            grey = opened.convert("L")
        if grey.size != (resolution, resolution):
            grey = grey.resize((resolution, resolution), Image.Resampling.BILINEAR)
        out[i] = np.asarray(grey)
    return out


def _to_tensor(batch_u8: np.ndarray, device: torch.device) -> torch.Tensor:
    import torch

    x = torch.from_numpy(batch_u8.astype(np.float32) / 127.5 - 1.0).to(device)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def train_vae(images: np.ndarray, cfg: VAEConfig, *, device: str | torch.device = "auto",
              progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train a VAE on uint8 (N, H, W) images; returns (vae in eval mode on CPU, summary)."""
    import torch

    if isinstance(device, str):
        device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                              ("cpu" if device == "auto" else device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vae = build_vae(cfg).to(device)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    # Cosine decay to 10 %: a short run still ends on a low-noise step size.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, cfg.steps) / cfg.steps))
    )
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    started = time.monotonic()
    losses: list[float] = []
    for step in range(cfg.steps):
        idx = rng.integers(0, len(images), cfg.batch_size)
        x = _to_tensor(images[idx], device)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        recon = vae.decode(z).sample
        rec_loss = (recon - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, so kl_weight reads as a ratio
        loss = rec_loss + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(rec_loss.detach()))
        if progress and (step % 100 == 0 or step == cfg.steps - 1):
            log.info("vae step %d/%d  L1 %.4f", step + 1, cfg.steps, losses[-1])
    vae.eval()
    with torch.no_grad():
        sample = _to_tensor(images[rng.integers(0, len(images), min(256, len(images)))], device)
        latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in sample.split(64)])
        recon = torch.cat([vae.decode(chunk).sample for chunk in latents.split(64)])
        eval_l1 = float((recon.clamp(-1, 1) - sample).abs().mean()) / 2.0  # in [0, 1] units
        scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    vae = vae.to("cpu")
    summary = {
        "config": cfg.to_dict(),
        "final_train_l1": float(np.mean(losses[-20:])) if losses else None,
        "eval_l1_01": eval_l1,  # mean absolute reconstruction error, image in [0, 1]
        "scaling_factor": scaling,
        "wall_s": round(time.monotonic() - started, 2),
        "device": str(device),
    }
    return vae, summary
