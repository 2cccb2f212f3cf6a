"""The diffusion part of an edit, on the model grid, for one image or a batch of images.

encode -> relevance map R -> guidance G = prior x R and masks M -> RSE denoising -> decode. A batch of B
images runs the networks once per stage for all of them: one text-encoder pass, one UNet call of 2B
for the relevance map (per noise draw), one UNet call of 3B per DDIM step; the VAE encodes and
decodes image by image unless asked (see `edit_model_grid_batch`). Everything per image stays per
image: its seed (its own generators, drawn in the same order as alone), its prior, tau and masks. The
images of one batch share the model grid shape and the parameters in `EditParams.batch_key()` (steps,
guidance scales, relevance level and draws, start and blend variants, resolution); a batch of one is
exactly a single edit. Latents and relevance are float32 whatever dtype the UNet and VAE run in.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from editor.model import LoadedModel, make_generator
from editor.relevance import relevance_maps
from editor.rse import encode_text, rse_denoise
from editor.types import EditParams

if TYPE_CHECKING:
    import torch


def derived_seed(seed: int, stage: str) -> int:
    """A stable 63-bit seed for one stage, derived from the user's seed (independent streams)."""
    digest = hashlib.sha256(f"{int(seed)}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class GridInput:
    """One image of a model-grid batch."""

    image: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    prompt: str
    prior: np.ndarray  # (H, W) float32 [0, 1] region prior on the model grid
    seed: int
    params: EditParams


@dataclass
class ModelGridEdit:
    """What the diffusion part produced on the model grid (H, W) and the latent grid (h, w)."""

    relevance_latent: np.ndarray  # (h, w) float32 [0, 1]
    relevance: np.ndarray  # (H, W) float32 [0, 1], bilinear upsample of relevance_latent
    guidance: np.ndarray  # (H, W) float32: prior * relevance
    mask_latent: np.ndarray  # (h, w) bool (all True without RSE)
    mask: np.ndarray  # (H, W) bool (all True without RSE)
    image: np.ndarray | None  # (3, H, W) float32 [0, 1] decoded edit; None when the mask was empty
    timings: dict[str, float] = field(default_factory=dict)  # the batch's stage times
    notes: list[str] = field(default_factory=list)
    batch_size: int = 1
    # How much of the region prior the relevance map took away (model grid): see `prior_vs_relevance`.
    prior_stats: dict[str, Any] = field(default_factory=dict)


def prior_vs_relevance(prior: np.ndarray, relevance: np.ndarray, mask: np.ndarray, tau: float) -> dict[str, Any]:
    """How much of the prior the relevance map removed: the prior's area (prior >= tau), the share of
    it where R >= tau, and the share of it the mask M = prior x R >= tau left out."""
    region = np.asarray(prior) >= tau
    area = int(region.sum())
    if area == 0:
        return {"tau": tau, "prior_pixels": 0, "relevance_at_least_tau": None, "removed_by_relevance": None}
    kept = int((np.asarray(mask) & region).sum())
    return {
        "tau": tau,
        "prior_pixels": area,
        "relevance_at_least_tau": round(float((np.asarray(relevance)[region] >= tau).mean()), 6),
        "removed_by_relevance": round(1.0 - kept / area, 6),
    }


class StageClock:
    """Per-stage wall-clock seconds; synchronises CUDA so a stage's time is its own."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self._last)
        self._last = now


def _cleanup(mask: np.ndarray) -> np.ndarray:
    """Drop isolated specks and fill pinholes (3x3 opening then closing)."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    opened = ndimage.binary_opening(mask, structure=structure)
    return np.asarray(ndimage.binary_closing(opened, structure=structure), dtype=bool)


def check_batch(inputs: Sequence[GridInput]) -> None:
    """One batch = one model grid shape and one `batch_key`; anything else is a caller error."""
    if not inputs:
        raise ValueError("an empty batch")
    shapes = {tuple(i.image.shape) for i in inputs}
    keys = {i.params.batch_key() for i in inputs}
    if len(shapes) > 1 or len(keys) > 1:
        raise ValueError(f"one batch needs one model grid shape and one batch key; got shapes {sorted(shapes)} "
                         f"and {len(keys)} parameter set(s)")


def _masks(prior: np.ndarray, r_lat: np.ndarray, r_up: np.ndarray, params: EditParams
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """Guidance G = prior x R (latent and model grid), the masks M = G >= tau and the prior's share the
    relevance map removed, for one image."""
    import torch
    import torch.nn.functional as F

    notes: list[str] = []
    prior = np.ascontiguousarray(prior, dtype=np.float32)
    prior_lat = F.interpolate(torch.from_numpy(prior)[None, None], size=r_lat.shape, mode="area")[0, 0]
    g_lat = prior_lat.numpy() * r_lat
    g_px = (prior * r_up).astype(np.float32)
    if params.rse and params.tau > 0:
        m_lat = g_lat >= params.tau
        m_px = g_px >= params.tau
        if params.mask_cleanup:
            m_px = _cleanup(m_px) & (prior > 0)  # clean-up never leaves the prior
    else:
        m_lat = np.ones(r_lat.shape, dtype=bool)
        m_px = np.ones(prior.shape, dtype=bool)
        notes.append("RSE off: plain InstructPix2Pix (mask all ones); R and G recorded only")
    use_rse = params.rse and params.tau > 0
    stats_tau = params.tau if params.tau > 0 else EditParams().tau  # without RSE: what it would do
    stats = prior_vs_relevance(prior, r_up, m_px if use_rse else g_px >= stats_tau, stats_tau)
    return g_px, m_lat, m_px, notes, stats


def edit_model_grid_batch(
    model: LoadedModel,
    new_scheduler: Callable[[], Any],
    inputs: Sequence[GridInput],
    *,
    step_callback: Callable[[int], None] | None = None,
    vae_batch: bool = False,
) -> list[ModelGridEdit]:
    """Relevance maps, guidance masks, RSE denoising and decoding for a batch (see the module docstring).

    The VAE encodes and decodes image by image unless `vae_batch`: its peak memory stays that of one
    edit, and its results are those of the image alone. The UNet's batched calls are not bit-identical
    to its calls alone on every backend (CPU: a Linear of batch 2B rounds differently from one of 2,
    ~2e-7 per call, amplified by the guidance scales), so a batched image matches its single edit within
    float rounding (docs/operations.md, "Batched editing", has the measured differences).
    `vae_batch=True` runs one VAE pass for the batch (a little faster on a GPU, more memory).
    """
    import torch
    import torch.nn.functional as F

    check_batch(inputs)
    m = model
    params = inputs[0].params  # the batch-key fields are the same for every input
    clock = StageClock(m.device)
    batch = len(inputs)
    height, width = int(inputs[0].image.shape[-2]), int(inputs[0].image.shape[-1])
    sf = m.scaling_factor
    with torch.inference_mode():
        # Encode: image conditioning = posterior mode (unscaled); the blended original = mode x sf;
        # the relevance map's source latents = a seeded posterior sample x sf (one generator per image).
        # All float32 from here.
        relevance_gens = [make_generator(m.device, derived_seed(i.seed, "relevance")) for i in inputs]
        if vae_batch:
            pixels = torch.cat([i.image for i in inputs]).to(device=m.device, dtype=m.vae.dtype)
            posterior = m.vae.encode(pixels).latent_dist
            image_latents = posterior.mode().float()
            sampled = posterior.sample(generator=relevance_gens if batch > 1 else relevance_gens[0])
            sampled_latents = sampled.float() * sf
        else:
            modes, samples = [], []
            for item, gen in zip(inputs, relevance_gens, strict=True):
                posterior = m.vae.encode(item.image.to(device=m.device, dtype=m.vae.dtype)).latent_dist
                modes.append(posterior.mode().float())
                samples.append(posterior.sample(generator=gen).float() * sf)
            image_latents, sampled_latents = torch.cat(modes), torch.cat(samples)
        source_latents = image_latents * sf
        embeddings = encode_text(m.tokenizer, m.text_encoder, [i.prompt for i in inputs] + [""], m.device)
        texts, empty = embeddings[:batch], embeddings[batch:]
        clock.lap("encode")

        r_lats = relevance_maps(
            m.unet, new_scheduler(), source_latents=sampled_latents, image_latents=image_latents,
            text_embeddings=torch.cat([texts, empty.expand(batch, *empty.shape[1:])]),
            timestep=params.relevance_timestep, samples=params.relevance_samples, generators=relevance_gens,
        )
        edits: list[ModelGridEdit] = []
        for item, r_lat in zip(inputs, r_lats, strict=True):
            r_up = F.interpolate(torch.from_numpy(r_lat)[None, None], size=(height, width), mode="bilinear",
                                 align_corners=False)[0, 0].clamp(0, 1).numpy()
            g_px, m_lat, m_px, notes, stats = _masks(item.prior, r_lat, r_up, item.params)
            edits.append(ModelGridEdit(relevance_latent=r_lat, relevance=r_up.astype(np.float32), guidance=g_px,
                                       mask_latent=m_lat, mask=m_px, image=None, notes=notes, batch_size=batch,
                                       prior_stats=stats))
        clock.lap("relevance")

        # Denoise the images that have something to edit, all in one loop.
        rse = [i.params.rse and i.params.tau > 0 for i in inputs]
        active = [k for k in range(batch) if not (rse[k] and not edits[k].mask.any())]
        for k in set(range(batch)) - set(active):
            edits[k].notes.append(f"empty guidance mask at tau={inputs[k].params.tau}: no pixel edited, "
                                  "output = source")
        if active:
            index = torch.tensor(active, device=m.device)
            latent_mask = None
            if any(rse[k] for k in active):  # plain-IP2P images in a mixed batch blend with a mask of ones
                masks = np.stack([edits[k].mask_latent if rse[k] else np.ones_like(edits[k].mask_latent)
                                  for k in active])
                latent_mask = torch.from_numpy(masks.astype(np.float32))[:, None].to(m.device)
            n = len(active)
            text_n = texts.index_select(0, index)
            empty_n = empty.expand(n, *empty.shape[1:])
            generators = [make_generator(m.device, inputs[k].seed) for k in active]
            latents = rse_denoise(
                m.unet, new_scheduler(),
                prompt_embeds=torch.cat([text_n, empty_n, empty_n]),
                image_latents=image_latents.index_select(0, index),
                source_latents=source_latents.index_select(0, index),
                latent_mask=latent_mask,
                steps=params.steps,
                text_guidance=params.text_guidance,
                image_guidance=params.image_guidance,
                start=params.start,
                blend_timestep=params.blend_timestep,
                generator=generators if n > 1 else generators[0],
                step_callback=step_callback,
            )
            clock.lap("denoise")
            if vae_batch:
                out = m.vae.decode((latents / sf).to(m.vae.dtype), return_dict=False)[0]
            else:
                out = torch.cat([m.vae.decode((lat[None] / sf).to(m.vae.dtype), return_dict=False)[0]
                                 for lat in latents])
            decoded = (out / 2 + 0.5).clamp(0, 1).float().cpu().numpy()
            for row, k in enumerate(active):
                edits[k].image = decoded[row]
            clock.lap("decode")
    for edit in edits:
        edit.timings = dict(clock.timings)
    return edits
