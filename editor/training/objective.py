"""The IP2P training objective and the frozen parts it needs: the VAE, the text encoder and tokenizer,
the DDPM noise scheduler and the empty prompt's embedding (`load_frozen`); `ip2p_loss` is the DDPM loss
of one micro-batch with IP2P conditioning dropout, every random draw from the step's own generator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editor.training.pair_dataset import tokenizer_max_length

if TYPE_CHECKING:
    import torch


@dataclass
class FrozenParts:
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    empty_embedding: Any  # (1, L, D) embedding of "" (the dropped-text condition)
    weight_dtype: Any


def load_frozen(base: Path, device: Any, weight_dtype: Any, prediction_type: str | None) -> FrozenParts:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae", local_files_only=True, torch_dtype=weight_dtype)
    sched = DDPMScheduler.from_pretrained(str(base), subfolder="scheduler", local_files_only=True)
    if prediction_type is not None:
        sched.register_to_config(prediction_type=prediction_type)
    text_encoder.to(dtype=weight_dtype)  # frozen parts run in the mixed-precision dtype
    for m in (vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
        m.to(device)
    with torch.no_grad():
        ids = tokenizer([""], max_length=tokenizer_max_length(tokenizer), padding="max_length", truncation=True,
                        return_tensors="pt").input_ids.to(device)
        empty = text_encoder(ids)[0]
    return FrozenParts(vae, text_encoder, tokenizer, sched, empty, weight_dtype)


def vae_scale_factor(vae: Any) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def check_resolution(resolution: int, vae: Any, unet: Any) -> None:
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    multiple = vae_scale_factor(vae) * unet_factor
    if resolution % multiple:
        raise ValueError(f"resolution {resolution} must be a multiple of {multiple} "
                         f"(VAE factor {vae_scale_factor(vae)} x UNet downsampling {unet_factor})")


def ip2p_loss(
    unet: Any, frozen: FrozenParts, batch: dict[str, Any], generator: torch.Generator, *,
    conditioning_dropout: float, device: Any,
) -> torch.Tensor:
    """The IP2P training loss of one micro-batch; every random draw comes from `generator` (CPU)."""
    import torch
    import torch.nn.functional as F
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    dt = frozen.weight_dtype
    vae, sched = frozen.vae, frozen.noise_scheduler
    with torch.no_grad():
        if "current_moments" in batch:  # cache_latents: the same posteriors, encoded before training
            current_dist = DiagonalGaussianDistribution(batch["current_moments"].to(device, dtype=dt))
            past_dist = DiagonalGaussianDistribution(batch["past_moments"].to(device, dtype=dt))
        else:
            current_dist = vae.encode(batch["current"].to(device, dtype=dt, non_blocking=True)).latent_dist
            past_dist = vae.encode(batch["past"].to(device, dtype=dt, non_blocking=True)).latent_dist
        latents = current_dist.sample(generator=generator) * vae.config.scaling_factor
        image_latents = past_dist.mode()  # unscaled, as IP2P conditions on it
        text = frozen.text_encoder(batch["input_ids"].to(device))[0]
    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device, latents.dtype)
    timesteps = torch.randint(0, sched.config.num_train_timesteps, (bsz,), generator=generator).to(device)
    p = torch.rand(bsz, generator=generator).to(device)
    if conditioning_dropout > 0:
        # [0, p): text dropped; [p, 2p): both dropped; [2p, 3p): image dropped (IP2P paper, 5 % each)
        drop_text = (p < 2 * conditioning_dropout).reshape(bsz, 1, 1)
        text = torch.where(drop_text, frozen.empty_embedding.to(text.dtype), text)
        keep_image = 1 - ((p >= conditioning_dropout) & (p < 3 * conditioning_dropout)).to(image_latents.dtype)
        image_latents = image_latents * keep_image.reshape(bsz, 1, 1, 1)
    noisy = sched.add_noise(latents, noise, timesteps)
    if sched.config.prediction_type == "epsilon":
        target = noise
    elif sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction type {sched.config.prediction_type!r}")
    pred = unet(torch.cat([noisy, image_latents], dim=1), timesteps, text, return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float(), reduction="mean")
