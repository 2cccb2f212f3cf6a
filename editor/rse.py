"""Region-Specific Editing (RSE): InstructPix2Pix DDIM sampling with latent blending outside the mask.

Read `rse_denoise` top to bottom like diffusers' `StableDiffusionInstructPix2PixPipeline.__call__`:
with `latent_mask=None` (plain IP2P) and `start="noise"` it performs exactly the same tensor operations
in the same order, so it reproduces that pipeline bit for bit on the same components and seed (in
float32; give the pipeline the same pinned scheduler).

Precision (as the research code): the UNet runs in its own dtype (float16 on CUDA for the research
profile), but the latent state, the guidance arithmetic and the scheduler step stay float32 -- the
UNet's inputs are cast down at the call and its prediction cast back up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch


def encode_text(tokenizer: Any, text_encoder: Any, texts: list[str], device: torch.device) -> torch.Tensor:
    """CLIP last hidden states for `texts`, padded to the tokenizer's max length (as diffusers does)."""
    import torch

    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(device)
    with torch.inference_mode():
        hidden = text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]
    return hidden.to(dtype=text_encoder.dtype, device=device)


def predict_noise(unet: Any, model_input: torch.Tensor, t: Any, embeddings: torch.Tensor) -> torch.Tensor:
    """One UNet pass in the UNet's dtype; the prediction comes back as float32 (the latent state's)."""
    import torch

    dtype = unet.dtype
    out = unet(model_input.to(dtype), t, encoder_hidden_states=embeddings.to(dtype), return_dict=False)[0]
    return out.to(torch.float32)


def rse_denoise(
    unet: Any,
    scheduler: Any,
    *,
    prompt_embeds: torch.Tensor,  # (3B, L, D): [instructions (B), "" (B), "" (B)]
    image_latents: torch.Tensor,  # (B, 4, h, w): VAE mode, unscaled
    source_latents: torch.Tensor,  # (B, 4, h, w): VAE mode x scaling factor (the clean original)
    latent_mask: torch.Tensor | None,  # (B, 1, h, w) float 1 = edit, 0 = keep; None = plain IP2P
    steps: int,
    text_guidance: float,
    image_guidance: float,
    start: Literal["source", "noise"],
    blend_timestep: Literal["current", "next"],
    generator: torch.Generator | list[torch.Generator],  # a list: one per image (B > 1), drawn as alone
    step_callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the DDIM loop; return the final latents (float32, scaled, ready for `vae.decode(lat / sf)`).

    A batch of B images runs one UNet call of 3B per step; every operation is per image (the
    guidance combination, the DDIM step and the blend are elementwise), so each image follows the
    same trajectory as alone."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    # 1. Timesteps: 991 ... 1 for 100 steps of the pinned 1000-step schedule (steps_offset 1).
    scheduler.set_timesteps(steps, device=image_latents.device)
    timesteps = scheduler.timesteps

    # 2. Image conditioning for the 3-way batch: [image, image, zeros] (text / image / unconditional),
    #    each part B images long.
    image_latents = image_latents.float()
    source_latents = source_latents.float()
    image_cond = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])

    # 3. Initial latents from ONE seeded noise tensor n (float32), also used for every blend below.
    noise = randn_tensor(source_latents.shape, generator=generator, device=source_latents.device,
                         dtype=torch.float32)
    if start == "noise":  # diffusers' pipeline: pure noise
        latents = noise * scheduler.init_noise_sigma
    else:  # research code: the original noised to the first timestep
        latents = scheduler.add_noise(source_latents, noise, timesteps[:1])

    latent_mask = None if latent_mask is None else latent_mask.float()
    keep_mask = None if latent_mask is None else 1.0 - latent_mask
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            # 4. One UNet pass on the batch of 3, latents concatenated with the image conditioning.
            model_input = scheduler.scale_model_input(torch.cat([latents] * 3), t)
            model_input = torch.cat([model_input, image_cond], dim=1)
            noise_pred = predict_noise(unet, model_input, t, prompt_embeds)

            # 5. Dual classifier-free guidance: eps_u + s_T (eps_t - eps_i) + s_I (eps_i - eps_u).
            eps_text, eps_image, eps_uncond = noise_pred.chunk(3)
            noise_pred = (
                eps_uncond
                + text_guidance * (eps_text - eps_image)
                + image_guidance * (eps_image - eps_uncond)
            )

            # 6. DDIM step x_t -> x_{t-1} (eta 0: deterministic).
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]

            # 7. RSE: outside the mask, replace the latents by the original at the matching noise level.
            if latent_mask is not None and keep_mask is not None:
                original = _original_at(scheduler, source_latents, noise, timesteps, i, blend_timestep)
                latents = latents * latent_mask + original * keep_mask

            if step_callback is not None:
                step_callback(i)
    return latents


def _original_at(
    scheduler: Any,
    source_latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    i: int,
    blend_timestep: Literal["current", "next"],
) -> torch.Tensor:
    """The original latents noised with `noise` to the blend level of step i.

    "current" (research code, default): the step's own t -- one level noisier than the latents are
    after the step. "next" (corrected): the level the latents sit at after the step; after the last
    step that is the clean original.
    """
    if blend_timestep == "current":
        return scheduler.add_noise(source_latents, noise, timesteps[i : i + 1])
    if i + 1 >= len(timesteps):
        return source_latents
    return scheduler.add_noise(source_latents, noise, timesteps[i + 1 : i + 2])
