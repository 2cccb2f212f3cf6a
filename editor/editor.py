"""`Editor.edit(image, instruction, *, seed, params) -> EditResult`: InstructX2X with RSE, end to end.

Stages (ARCHITECTURE.md §3): preprocess -> region prior -> encode -> relevance map -> guidance mask ->
RSE denoising -> decode -> composite at native resolution. Every random draw comes from a generator
seeded from `seed`, so the same seed gives byte-identical output. The denoising generator is seeded with
`seed` itself (so `start="noise"` with RSE off reproduces diffusers' pipeline for that seed); the
relevance map's draws use a generator seeded from a value derived from `seed`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from editor.composite import blend_stored, feather_alpha, native_mask
from editor.instructions import ParsedInstruction, parse_instruction
from editor.model import LoadedModel, load_model, make_generator
from editor.relevance import relevance_map
from editor.rse import encode_text, rse_denoise
from editor.types import EditParams, EditResult, SourceImage

if TYPE_CHECKING:
    import torch


def derived_seed(seed: int, stage: str) -> int:
    """A stable 63-bit seed for one stage, derived from the user's seed (independent streams)."""
    digest = hashlib.sha256(f"{int(seed)}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass
class ModelGridEdit:
    """What the diffusion part produced on the model grid (H, W) and the latent grid (h, w)."""

    relevance_latent: np.ndarray  # (h, w) float32 [0, 1]
    relevance: np.ndarray  # (H, W) float32 [0, 1], bilinear upsample of relevance_latent
    guidance: np.ndarray  # (H, W) float32: prior * relevance
    mask_latent: np.ndarray  # (h, w) bool (all True without RSE)
    mask: np.ndarray  # (H, W) bool (all True without RSE)
    image: np.ndarray | None  # (3, H, W) float32 [0, 1] decoded edit; None when the mask was empty
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _StageClock:
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


class Editor:
    """A loaded InstructX2X model plus the RSE editing procedure. Thread-safe (one edit at a time)."""

    def __init__(self, model: LoadedModel, *, segmenter: Any | None = None) -> None:
        self.model = model
        self.segmenter = segmenter
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        single_file_config: str | Path | None = None,
    ) -> Editor:
        return cls(load_model(path, device=device, dtype=dtype, single_file_config=single_file_config))

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def model_hash(self) -> str:
        return self.model.weights_hash

    @property
    def resolution(self) -> int:
        return self.model.resolution

    # ------------------------------------------------------------------------------------- model grid

    def edit_model_grid(
        self,
        image: torch.Tensor,  # (1, 3, H, W) in [-1, 1]
        prompt: str,
        prior: np.ndarray,  # (H, W) float32 [0, 1] region prior on the model grid
        *,
        seed: int,
        params: EditParams,
        step_callback: Callable[[int], None] | None = None,
    ) -> ModelGridEdit:
        """Relevance map, guidance mask, RSE denoising and decoding on the model grid."""
        import torch
        import torch.nn.functional as F

        m = self.model
        clock = _StageClock(m.device)
        notes: list[str] = []
        height, width = int(image.shape[-2]), int(image.shape[-1])
        sf = m.scaling_factor
        with torch.inference_mode():
            # Encode: image conditioning = posterior mode (unscaled); the blended original = mode x sf;
            # the relevance map's source latents = a seeded posterior sample x sf.
            pixels = image.to(device=m.device, dtype=m.dtype)
            posterior = m.vae.encode(pixels).latent_dist
            image_latents = posterior.mode()
            source_latents = image_latents * sf
            relevance_gen = make_generator(m.device, derived_seed(seed, "relevance"))
            sampled_latents = posterior.sample(generator=relevance_gen) * sf
            embeddings = encode_text(m.tokenizer, m.text_encoder, [prompt, ""], m.device)
            clock.lap("encode")

            r_lat = relevance_map(
                m.unet, self._scheduler(), source_latents=sampled_latents, image_latents=image_latents,
                text_embeddings=embeddings, timestep=params.relevance_timestep,
                samples=params.relevance_samples, generator=relevance_gen,
            )
            r_up = F.interpolate(torch.from_numpy(r_lat)[None, None], size=(height, width), mode="bilinear",
                                 align_corners=False)[0, 0].clamp(0, 1).numpy()
            clock.lap("relevance")

            # Guidance G = prior x R at the latent and at the model grid; M = G >= tau.
            prior = np.ascontiguousarray(prior, dtype=np.float32)
            prior_lat = F.interpolate(torch.from_numpy(prior)[None, None], size=r_lat.shape, mode="area")[0, 0]
            g_lat = prior_lat.numpy() * r_lat
            g_px = (prior * r_up).astype(np.float32)
            use_rse = params.rse and params.tau > 0
            if use_rse:
                m_lat = g_lat >= params.tau
                m_px = g_px >= params.tau
                if params.mask_cleanup:
                    m_px = _cleanup(m_px) & (prior > 0)  # clean-up never leaves the prior
            else:
                m_lat = np.ones(r_lat.shape, dtype=bool)
                m_px = np.ones((height, width), dtype=bool)
                notes.append("RSE off: plain InstructPix2Pix (mask all ones); R and G recorded only")
            clock.lap("guidance")

            decoded: np.ndarray | None = None
            if use_rse and not m_px.any():
                notes.append(f"empty guidance mask at tau={params.tau}: no pixel edited, output = source")
            else:
                latent_mask = None
                if use_rse:
                    latent_mask = torch.from_numpy(m_lat.astype(np.float32))[None, None].to(m.device, m.dtype)
                text, empty = embeddings[:1], embeddings[1:]
                latents = rse_denoise(
                    m.unet, self._scheduler(),
                    prompt_embeds=torch.cat([text, empty, empty]),
                    image_latents=image_latents,
                    source_latents=source_latents,
                    latent_mask=latent_mask,
                    steps=params.steps,
                    text_guidance=params.text_guidance,
                    image_guidance=params.image_guidance,
                    start=params.start,
                    blend_timestep=params.blend_timestep,
                    generator=make_generator(m.device, seed),
                    step_callback=step_callback,
                )
                clock.lap("denoise")
                out = m.vae.decode(latents / sf, return_dict=False)[0]
                decoded = (out / 2 + 0.5).clamp(0, 1)[0].float().cpu().numpy()
                clock.lap("decode")
        return ModelGridEdit(
            relevance_latent=r_lat, relevance=r_up.astype(np.float32), guidance=g_px,
            mask_latent=m_lat, mask=m_px, image=decoded, timings=clock.timings, notes=notes,
        )

    def _scheduler(self) -> Any:
        """A fresh scheduler per use: schedulers keep per-run state."""
        return type(self.model.scheduler).from_config(self.model.scheduler.config)

    # ------------------------------------------------------------------------------------------- edit

    def edit(
        self,
        image: SourceImage,
        instruction: str | ParsedInstruction,
        *,
        seed: int,
        params: EditParams | None = None,
        step_callback: Callable[[int], None] | None = None,
    ) -> EditResult:
        """`step_callback(i)` is called after DDIM step i (0-based, of `params.steps`), e.g. for progress."""
        from editor.orientation import Orientation
        from editor.preprocess import preprocess
        from editor.regions import build_prior

        params = params or EditParams()
        parsed = parse_instruction(instruction) if isinstance(instruction, str) else instruction
        started = time.perf_counter()
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        resolution = params.resolution or self.resolution
        pre = preprocess(image, resolution)
        timings["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        orientation = Orientation.from_source(image)
        region_prior = build_prior(
            pre.model_image, parsed, orientation, source=params.prior, paper_dir=params.paper_prior_dir,
            segmenter=self.segmenter,
        )
        timings["prior"] = time.perf_counter() - t0

        prompt = parsed.canonical()
        with self._lock:
            grid_edit = self.edit_model_grid(
                pre.model_rgb_tensor(), prompt, region_prior.mask, seed=seed, params=params,
                step_callback=step_callback,
            )
        for stage in ("encode", "relevance", "denoise", "decode"):
            timings[stage] = grid_edit.timings.get(stage, 0.0)
        timings["relevance"] += grid_edit.timings.get("guidance", 0.0)

        t0 = time.perf_counter()
        grid = pre.grid
        relevance = np.clip(grid.to_native(grid_edit.relevance, order="linear"), 0, 1).astype(np.float32)
        guidance = np.clip(grid.to_native(grid_edit.guidance, order="linear"), 0, 1).astype(np.float32)
        if grid_edit.image is None:
            mask = np.zeros(image.shape, dtype=bool)
            counterfactual = image.pixels.copy()
        else:
            mask = native_mask(grid_edit.mask, grid.to_native)
            gray = grid_edit.image.mean(axis=0)  # the model's 3 channels -> one grey channel
            edited = pre.mapping.to_stored(np.clip(grid.to_native(gray, order="linear"), 0, 1))
            alpha = feather_alpha(mask, params.feather_px)
            counterfactual = blend_stored(image.pixels, edited, alpha)
        finding_masks = self._finding_masks(mask, parsed, region_prior.per_finding, grid)
        timings["composite"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started

        m = self.model
        provenance: dict[str, Any] = {
            "prompt": prompt,
            "laterality": region_prior.laterality,
            "orientation": orientation.provenance,
            "regions": list(region_prior.regions),
            "notes": list(region_prior.notes) + grid_edit.notes,
            "display_mapping": pre.mapping.describe(),
            "native_shape": list(grid.native_shape),
            "model_shape": list(grid.model_shape),
            "latent_shape": list(grid_edit.relevance_latent.shape),
            "rse_applied": bool(params.rse and params.tau > 0),
            "feather": f"inward ramp of {params.feather_px} px inside the mask; alpha = 0 outside it",
            "model_kind": m.kind,
            "device": str(m.device),
            "dtype": str(m.dtype).replace("torch.", ""),
            "sop_instance_uid": image.sop_instance_uid,
            "synthetic": True,
        }
        return EditResult(
            counterfactual=counterfactual,
            relevance=relevance,
            guidance=guidance,
            mask=mask,
            finding_masks=finding_masks,
            coverage=float(mask.mean()),
            instruction=parsed,
            prior_source=region_prior.source,
            seed=int(seed),
            params=params,
            model_id=m.model_id,
            model_hash=m.weights_hash,
            timings={k: round(v, 6) for k, v in timings.items()},
            provenance=provenance,
            source_display=pre.display_native,
        )

    @staticmethod
    def _finding_masks(
        mask: np.ndarray, parsed: ParsedInstruction, per_finding: dict[str, np.ndarray], grid: Any
    ) -> dict[str, np.ndarray]:
        """M restricted to each finding's prior (> 0 after linear resampling, so the union is M)."""
        out: dict[str, np.ndarray] = {}
        for name in parsed.finding_names:
            prior = per_finding.get(name)
            if prior is None:
                out[name] = mask.copy()
            else:
                out[name] = mask & (grid.to_native(np.asarray(prior, dtype=np.float32), order="linear") > 0)
        return out
