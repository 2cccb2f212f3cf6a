"""`Editor.edit(image, instruction, *, seed, params) -> EditResult`: InstructX2X with RSE, end to end.

Stages (ARCHITECTURE.md §3): preprocess -> region prior -> encode -> relevance map -> guidance mask ->
RSE denoising -> decode -> composite at native resolution. Every random draw comes from a generator
seeded from `seed`, so the same seed gives byte-identical output. The denoising generator is seeded with
`seed` itself (so `start="noise"` with RSE off reproduces diffusers' pipeline for that seed); the
relevance map's draws use a generator seeded from a value derived from `seed`.

The text encoder gets the instruction as written (whitespace normalised): the model was trained on the
dataset's own sentences. The parse only drives the prior, laterality and validation. How the image is fed
to the model (grid, intensity, dtype) is the model's input profile (editor/profiles.py); latents and
relevance stay float32 whatever dtype the UNet runs in (editor/model_grid.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from editor.composite import composite, native_mask
from editor.instructions import ParsedInstruction, normalise_whitespace, parse_instruction
from editor.model import SCHEDULER_NAME, LoadedModel, load_model
from editor.model_grid import GridInput, ModelGridEdit, edit_model_grid_batch
from editor.types import EditItem, EditParams, EditResult, SourceImage

if TYPE_CHECKING:
    import torch

    from editor.orientation import Orientation
    from editor.preprocess import Preprocessed
    from editor.regions import RegionPrior


@dataclass
class _Prepared:
    """One item after everything that happens before the model (per image, outside the lock)."""

    image: SourceImage
    parsed: ParsedInstruction
    prompt: str  # what the text encoder gets
    params: EditParams
    pre: Preprocessed
    orientation: Orientation
    region_prior: RegionPrior
    grid_input: GridInput
    timings: dict[str, float]
    prepare_s: float


_PENDING: Any = None  # placeholder of a result not computed yet


def _clip01(resampled: np.ndarray) -> np.ndarray:
    """A resampled float32 map clipped to [0, 1] (one full-size copy, no second one for the dtype)."""
    return np.asarray(np.clip(np.asarray(resampled, dtype=np.float32), 0.0, 1.0), dtype=np.float32)


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
        """Relevance map, guidance mask, RSE denoising and decoding on the model grid (one image)."""
        item = GridInput(image=image, prompt=prompt, prior=prior, seed=seed, params=params)
        return edit_model_grid_batch(self.model, self._scheduler, [item], step_callback=step_callback)[0]

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
        """Edit `image` as `instruction` says. `instruction` is the sentence as written (the text encoder
        gets it with whitespace normalised) or a ParsedInstruction (its `prompt`: the text it was parsed
        from, else its canonical sentence). `step_callback(i)` is called after DDIM step i (0-based) of
        `params.steps` -- for progress bars; it is not called when the mask is empty (no denoising)."""
        result = self.edit_batch([EditItem(image, instruction, seed, params)], step_callback=step_callback)[0]
        assert isinstance(result, EditResult)
        return result

    def edit_batch(
        self, items: Sequence[EditItem], *, max_batch: int | None = None, return_exceptions: bool = False,
        vae_batch: bool = False, step_callback: Callable[[int], None] | None = None,
    ) -> list[EditResult | Exception]:
        """Edit several images, each exactly as `edit` would, running those that share a model grid shape
        and `EditParams.batch_key()` through one UNet call per step (at most `max_batch` together).

        Results come back in the order of `items`. With `return_exceptions`, an item that fails (its
        instruction, preprocessing, prior or composite) gets its exception in its place and the others
        go on; a failure of a shared model pass is the exception of every item of that batch.
        `vae_batch`: one VAE pass for the whole batch too (see `edit_model_grid_batch`: more memory, a
        little faster on a GPU). `step_callback(i)`: after DDIM step i of each batch's loop.
        """
        prepared: list[_Prepared | Exception] = []
        for item in items:
            try:
                prepared.append(self._prepare(item))
            except Exception as exc:
                if not return_exceptions:
                    raise
                prepared.append(exc)
        results: list[EditResult | Exception] = [p if isinstance(p, Exception) else _PENDING for p in prepared]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for k, p in enumerate(prepared):
            if not isinstance(p, Exception):
                groups.setdefault((p.params.batch_key(), tuple(p.grid_input.image.shape)), []).append(k)
        limit = max(1, max_batch or len(items) or 1)
        for members in groups.values():
            for start in range(0, len(members), limit):
                chunk = members[start : start + limit]
                try:
                    with self._lock:
                        edits = edit_model_grid_batch(
                            self.model, self._scheduler,
                            [prepared[k].grid_input for k in chunk],  # type: ignore[union-attr]
                            vae_batch=vae_batch, step_callback=step_callback,
                        )
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    for k in chunk:
                        results[k] = exc
                    continue
                for k, grid_edit in zip(chunk, edits, strict=True):
                    try:
                        results[k] = self._finish(prepared[k], grid_edit)  # type: ignore[arg-type]
                    except Exception as exc:
                        if not return_exceptions:
                            raise
                        results[k] = exc
        return results

    def _prepare(self, item: EditItem) -> _Prepared:
        """Parse, preprocess and build the region prior of one item (everything before the model)."""
        from editor.orientation import Orientation
        from editor.preprocess import preprocess
        from editor.regions import build_prior

        params = item.params or EditParams()
        instruction = item.instruction
        if isinstance(instruction, str):
            parsed, prompt = parse_instruction(instruction), normalise_whitespace(instruction)
        else:
            parsed, prompt = instruction, instruction.prompt
        started = time.perf_counter()
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        pre = preprocess(item.image, params.resolution or self.resolution, self.model.profile)
        timings["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        orientation = Orientation.from_source(item.image)
        anatomy_image = pre.anatomy_image if pre.anatomy_image is not None else pre.model_image
        region_prior = build_prior(
            anatomy_image, parsed, orientation, source=params.prior, paper_dir=params.paper_prior_dir,
            segmenter=self.segmenter,
        )
        timings["prior"] = time.perf_counter() - t0
        grid_input = GridInput(image=pre.model_rgb_tensor(), prompt=prompt, prior=region_prior.mask,
                               seed=int(item.seed), params=params)
        return _Prepared(item.image, parsed, prompt, params, pre, orientation, region_prior, grid_input, timings,
                         time.perf_counter() - started)

    def _finish(self, p: _Prepared, grid_edit: ModelGridEdit) -> EditResult:
        """Composite at native resolution and assemble the result with its provenance."""
        image, params, parsed = p.image, p.params, p.parsed
        timings = dict(p.timings)
        for stage in ("encode", "relevance", "denoise", "decode"):
            timings[stage] = grid_edit.timings.get(stage, 0.0)
        timings["relevance"] += grid_edit.timings.get("guidance", 0.0)
        model_s = sum(grid_edit.timings.values())

        t0 = time.perf_counter()
        native = composite_native(p, grid_edit)
        relevance, guidance, mask = native.relevance, native.guidance, native.mask
        counterfactual, finding_masks = native.counterfactual, native.finding_masks
        timings["composite"] = time.perf_counter() - t0
        timings["total"] = p.prepare_s + model_s + timings["composite"]

        m = self.model
        provenance: dict[str, Any] = {
            "prompt": p.prompt,
            "input_profile": p.pre.describe(),
            "laterality": p.region_prior.laterality,
            "orientation": p.orientation.provenance,
            "regions": list(p.region_prior.regions),
            "broad_field": list(p.region_prior.broad_field),
            "prior_vs_relevance": grid_edit.prior_stats,
            "notes": list(p.region_prior.notes) + grid_edit.notes,
            "display_mapping": p.pre.mapping.describe(),
            "native_shape": list(p.pre.grid.native_shape),
            "model_shape": list(p.pre.grid.model_shape),
            "latent_shape": list(grid_edit.relevance_latent.shape),
            "rse_applied": bool(params.rse and params.tau > 0),
            "feather": f"inward ramp of {params.feather_px} px inside the mask; alpha = 0 outside it",
            "model_kind": m.kind,
            "device": str(m.device),
            "dtype": str(m.dtype).replace("torch.", ""),
            "precision": {"unet": str(m.unet.dtype).replace("torch.", ""), "latents": "float32",
                          "relevance": "float32"},
            "scheduler": {"name": SCHEDULER_NAME,
                          "prediction_type": str(m.scheduler.config.prediction_type),
                          "folder_differences": list(m.scheduler_notes)},
            "batch_size": grid_edit.batch_size,
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
            prompt=p.prompt,
            prior_source=p.region_prior.source,
            seed=p.grid_input.seed,
            params=params,
            model_id=m.model_id,
            model_hash=m.weights_hash,
            timings={k: round(v, 6) for k, v in timings.items()},
            provenance=provenance,
            source_display=p.pre.display_native,
        )


@dataclass
class NativeMaps:
    """An edit's arrays on the source's native grid (what EditResult carries)."""

    relevance: np.ndarray
    guidance: np.ndarray
    mask: np.ndarray
    counterfactual: np.ndarray
    finding_masks: dict[str, np.ndarray]


def composite_native(p: _Prepared, grid_edit: ModelGridEdit) -> NativeMaps:
    """Step 7: R, G and M back on the native grid, and the edit composited into the stored values."""
    grid, image = p.pre.grid, p.image
    relevance = _clip01(grid.to_native(grid_edit.relevance, order="linear"))
    guidance = _clip01(grid.to_native(grid_edit.guidance, order="linear"))
    if grid_edit.image is None:
        mask = np.zeros(image.shape, dtype=bool)
        counterfactual = image.pixels.copy()
    else:
        mask = native_mask(grid_edit.mask, grid.to_native)
        gray = grid_edit.image.mean(axis=0)  # the model's 3 channels -> one grey channel
        # The exact way back: inverse resize, inverse intensity curve (display values), then the inverse
        # display mapping -- inside M only (composite).
        edited = p.pre.to_display(gray)
        counterfactual = composite(image.pixels, edited, mask, p.params.feather_px, p.pre.mapping.to_stored)
    finding_masks = _finding_masks(mask, p.parsed, p.region_prior.per_finding, grid)
    return NativeMaps(relevance, guidance, mask, counterfactual, finding_masks)


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
