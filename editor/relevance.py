"""Relevance map R (from "Watch Your Steps"): where does the instruction change the noise prediction?

Noise the source latents to t = 800, run the UNet once on a batch of two -- conditioned on
[instruction + image latents, empty prompt + image latents] -- and sum |eps_text - eps_image| over the
latent channels. Outliers are clipped at Q3 + 1.5 IQR (midpoint percentiles), then the map is min-max
normalised to [0, 1]. K > 1 averages the raw maps of K independent noise draws before normalising.

The difference of two noise predictions is a small number from two large ones: the latents, the noise and
this arithmetic stay float32 whatever dtype the UNet runs in (a bfloat16 latent state made the map of
the demo model correlate only 0.885 with float32 on a GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def normalise_relevance(raw: np.ndarray) -> np.ndarray:
    """Clip to [0, Q3 + 1.5 IQR] (midpoint percentiles) and min-max to [0, 1]; float32."""
    values = np.asarray(raw, dtype=np.float64)
    q1, q3 = np.percentile(values, [25, 75], method="midpoint")
    clipped = np.clip(values, 0.0, q3 + 1.5 * (q3 - q1))
    low, high = float(clipped.min()), float(clipped.max())
    if high <= low:  # a flat map carries no location: all zeros, so no pixel passes tau > 0
        return np.zeros(values.shape, dtype=np.float32)
    return ((clipped - low) / (high - low)).astype(np.float32)


def relevance_map(
    unet: Any,
    scheduler: Any,
    *,
    source_latents: torch.Tensor,  # (1, 4, h, w): VAE posterior sample x scaling factor
    image_latents: torch.Tensor,  # (1, 4, h, w): VAE mode, unscaled (the IP2P image conditioning)
    text_embeddings: torch.Tensor,  # (2, L, D): [instruction, empty prompt]
    timestep: int,
    samples: int,
    generator: torch.Generator,
) -> np.ndarray:
    """Latent-grid relevance map (h, w), float32 in [0, 1]."""
    return relevance_maps(unet, scheduler, source_latents=source_latents, image_latents=image_latents,
                          text_embeddings=text_embeddings, timestep=timestep, samples=samples,
                          generators=[generator])[0]


def relevance_maps(
    unet: Any,
    scheduler: Any,
    *,
    source_latents: torch.Tensor,  # (B, 4, h, w): VAE posterior samples x scaling factor
    image_latents: torch.Tensor,  # (B, 4, h, w): VAE mode, unscaled (the IP2P image conditioning)
    text_embeddings: torch.Tensor,  # (2B, L, D): [instruction_1 .. instruction_B, empty prompt x B]
    timestep: int,
    samples: int,
    generators: list[torch.Generator],  # one per image: its noise draws are its own, as alone
) -> list[np.ndarray]:
    """Latent-grid relevance maps of a batch, one UNet call of 2B per noise draw; float32 in [0, 1]."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from editor.rse import predict_noise

    batch = int(source_latents.shape[0])
    if len(generators) != batch or int(text_embeddings.shape[0]) != 2 * batch:
        raise ValueError(f"relevance batch of {batch}: {len(generators)} generator(s), "
                         f"{int(text_embeddings.shape[0])} embedding(s)")
    source_latents = source_latents.float()  # the noise and the map in float32, whatever the UNet's dtype
    t = torch.tensor([int(timestep)], device=source_latents.device, dtype=torch.long)
    image_pair = torch.cat([image_latents, image_latents]).float()
    maps: list[list[np.ndarray]] = [[] for _ in range(batch)]
    with torch.inference_mode():
        for _ in range(max(1, int(samples))):
            noise = randn_tensor(source_latents.shape, generator=generators if batch > 1 else generators[0],
                                 device=source_latents.device, dtype=source_latents.dtype)
            noisy = scheduler.add_noise(source_latents, noise, t)
            model_input = scheduler.scale_model_input(torch.cat([noisy, noisy]), t)
            model_input = torch.cat([model_input, image_pair], dim=1)
            eps = predict_noise(unet, model_input, t, text_embeddings)
            eps_text, eps_image = eps.chunk(2)
            raw = (eps_text - eps_image).abs().sum(dim=1).cpu().numpy()
            for k in range(batch):
                maps[k].append(raw[k])
    return [normalise_relevance(np.mean(draws, axis=0)) for draws in maps]
