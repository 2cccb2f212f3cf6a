"""Loading an InstructPix2Pix-layout model (InstructX2X) from local files only.

Two layouts are supported:

* a **diffusers folder** (``model_index.json`` + ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``),
  loaded with ``local_files_only=True``;
* an **original-format single file** (``.ckpt`` / ``.safetensors``, the layout the InstructX2X research
  release and the original ``instruct-pix2pix`` training code write), loaded with diffusers'
  ``StableDiffusionInstructPix2PixPipeline.from_single_file(..., config=<local folder>,
  local_files_only=True)``. ``single_file_config`` must be a *local diffusers config folder* for the
  SD 1.5 InstructPix2Pix layout: ``model_index.json``, ``unet/config.json`` (in_channels 8),
  ``vae/config.json``, ``text_encoder/config.json``, ``scheduler/scheduler_config.json`` and the
  ``tokenizer/`` files (CLIP ViT-L/14 vocabulary) -- no weights are needed in it. A folder saved by
  ``StableDiffusionInstructPix2PixPipeline.save_pretrained`` of ``timbrooks/instruct-pix2pix`` (copy it
  once onto the node, weights may be deleted) is exactly that. Without such a folder diffusers would
  fetch configs from the Hub, so we refuse instead. To avoid converting on every start, convert once:
  ``load_model(ckpt, single_file_config=cfg)`` then ``save_model_folder(loaded, out_dir)`` and point the
  node at ``out_dir`` (a diffusers folder; its ``x2x_model.json`` keeps the original model id).

The denoising scheduler is pinned: DDIM with the CompVis v1-4 scheduler config that the research loop
loads (scaled_linear betas 0.00085-0.012 over 1000 steps, steps_offset 1, clip_sample off,
set_alpha_to_one off; 100 steps -> timesteps 991 ... 1), whatever the folder's scheduler config says (a
config without `clip_sample` would otherwise silently turn x0 clipping on). Only the folder's
`prediction_type` is kept (it belongs to the weights, not to the sampler); every difference between the
folder's config and the pinned one is recorded (`LoadedModel.scheduler_notes`).

Input profile: `x2x_model.json`'s `input_profile` (editor/profiles.py); a folder that declares none is
the published checkpoint and gets `research`. It sets how images are fed to the model and the default
dtype on CUDA (float16; the UNet runs in that dtype, the latent state and the relevance arithmetic stay
float32 whatever it is).

Every result carries ``model_id`` (``x2x_model.json``'s ``model_id`` when present, else the folder / file
name) and ``weights_hash`` (sha256 over the weight files' relative names and bytes), so a result can be
traced to the exact weights. ``describe_model`` (editor/model_identity.py) gives both, and the input
profile, without building any torch module.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editor.model_identity import ModelInfo, ModelLoadError, describe_model
from editor.profiles import InputProfile, get_profile

if TYPE_CHECKING:
    import torch

log = logging.getLogger("x2x.editor.model")

# DDIM as the research loop builds it: DDIMScheduler.from_pretrained("CompVis/stable-diffusion-v1-4",
# subfolder="scheduler"); the unlisted options are diffusers' DDIM defaults, written out so that no
# folder's config can change them.
RESEARCH_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "thresholding": False,
    "rescale_betas_zero_snr": False,
}
SCHEDULER_NAME = "CompVis/stable-diffusion-v1-4 DDIM (pinned)"


@dataclass
class LoadedModel:
    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any  # DDIMScheduler (a template: copy it per edit, schedulers keep state)
    model_id: str
    weights_hash: str
    resolution: int
    device: torch.device
    dtype: torch.dtype
    kind: str
    profile: InputProfile = field(default_factory=lambda: get_profile(None))
    scheduler_notes: tuple[str, ...] = ()  # how the folder's scheduler config differs from the pinned one

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def info(self) -> ModelInfo:
        return ModelInfo(self.model_id, self.weights_hash, self.resolution, self.kind, self.profile.name)


# --------------------------------------------------------------------------------------------- device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, profile: InputProfile | None = None) -> torch.dtype:
    """auto: CUDA -> the input profile's dtype (float16 for both profiles; a profile asking for bfloat16
    gets float16 where the GPU lacks it); CPU -> float32. The latent state stays float32 regardless."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            wanted = (profile or get_profile(None)).cuda_dtype
            if wanted == "bfloat16" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return torch.float16
        return torch.float32
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    if device.type == "cpu" and names[dtype] == torch.float16:
        log.warning("float16 on CPU is slow and imprecise; float32 is recommended")
    return names[dtype]


def disable_progress_bars() -> None:
    """No tqdm bars from diffusers / transformers (command line and services)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator on the compute device (CPU generator on CPU, device generator on CUDA)."""
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))


# ------------------------------------------------------------------------------------------------ loading


def _load_pipeline(path: Path, dtype: torch.dtype, single_file_config: str | Path | None) -> Any:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    common = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False,
              "local_files_only": True}
    if path.is_dir():
        return StableDiffusionInstructPix2PixPipeline.from_pretrained(str(path), **common)
    if single_file_config is None:
        raise ModelLoadError(
            f"{path} is a single-file checkpoint: give single_file_config = a local diffusers config folder "
            "for the SD1.5 InstructPix2Pix layout (see editor/model.py); without it diffusers would fetch "
            "configs from the Hub, which this node never does"
        )
    cfg = Path(single_file_config)
    if not (cfg.is_dir() and (cfg / "model_index.json").is_file()):
        raise ModelLoadError(
            f"single_file_config {cfg} must be a local diffusers config folder with model_index.json, "
            "unet/, vae/, text_encoder/, tokenizer/, scheduler/ configs (an original .yaml alone would "
            "make diffusers fetch the CLIP text encoder config from the Hub)"
        )
    return StableDiffusionInstructPix2PixPipeline.from_single_file(str(path), config=str(cfg), **common)


def research_scheduler(prediction_type: str = "epsilon") -> Any:
    """A fresh DDIM scheduler with the pinned research config (`RESEARCH_SCHEDULER_CONFIG`)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{**RESEARCH_SCHEDULER_CONFIG, "prediction_type": prediction_type})


def pinned_scheduler(folder_config: Any) -> tuple[Any, tuple[str, ...]]:
    """The pinned scheduler for a model whose folder carries `folder_config`, and the differences."""
    config = dict(folder_config or {})
    prediction = str(config.get("prediction_type") or "epsilon")
    notes: list[str] = []
    for key, pinned in RESEARCH_SCHEDULER_CONFIG.items():
        if key == "prediction_type":
            continue
        if key not in config:
            notes.append(f"{key}: not in the folder's config; pinned {pinned!r}")
        elif config[key] != pinned and not (isinstance(pinned, float) and isinstance(config[key], float)
                                            and abs(config[key] - pinned) < 1e-12):
            notes.append(f"{key}: folder {config[key]!r}, pinned {pinned!r}")
    if prediction != "epsilon":
        notes.append(f"prediction_type {prediction!r} kept from the folder (it belongs to the weights)")
    return research_scheduler(prediction), tuple(notes)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    single_file_config: str | Path | None = None,
) -> LoadedModel:
    """Load a local IP2P model onto `device` in `dtype`, in eval mode, with the pinned DDIM scheduler."""
    p = Path(path)
    info = describe_model(p)
    profile = get_profile(info.input_profile)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, profile)
    try:
        with warnings.catch_warnings():  # diffusers >= 0.36 renamed torch_dtype; older ones need it
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = _load_pipeline(p, torch_dtype, single_file_config)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load model from {p}: {exc}") from exc
    if pipe.unet.config.in_channels != 2 * pipe.vae.config.latent_channels:
        raise ModelLoadError(
            f"{p}: UNet has {pipe.unet.config.in_channels} input channels; an InstructPix2Pix model needs "
            f"{2 * pipe.vae.config.latent_channels} (noisy latents + image latents)"
        )
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.to(torch_device)
        module.eval()
        module.requires_grad_(False)
    scheduler, scheduler_notes = pinned_scheduler(pipe.scheduler.config)
    if scheduler_notes:
        log.info("%s: scheduler pinned to %s; folder config differs: %s", p, SCHEDULER_NAME,
                 "; ".join(scheduler_notes))
    if torch_device.type == "cpu" and info.kind != "fixture":
        n_params = sum(p.numel() for p in pipe.unet.parameters())
        if n_params > 100_000_000:
            log.warning("a %.0fM-parameter UNet on CPU takes minutes per edit; use a GPU or fewer steps",
                        n_params / 1e6)
    return LoadedModel(
        vae=pipe.vae,
        unet=pipe.unet,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=scheduler,
        model_id=info.model_id,
        weights_hash=info.weights_hash,
        resolution=info.resolution,
        device=torch_device,
        dtype=torch_dtype,
        kind=info.kind,
        profile=profile,
        scheduler_notes=scheduler_notes,
    )


def save_model_folder(model: LoadedModel, out_dir: str | Path) -> Path:
    """Save a loaded model (e.g. converted from a single file) as a diffusers folder, keeping its id."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    out = Path(out_dir)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=model.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    (out / "x2x_model.json").write_text(json.dumps(
        {"model_id": model.model_id, "kind": "diffusers", "resolution": model.resolution,
         "input_profile": model.profile.name, "converted_from_hash": model.weights_hash}, indent=2))
    return out


def pipeline_from_model(model: LoadedModel) -> Any:
    """diffusers' own IP2P pipeline on the same components (reference for tests and benchmarks)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=type(model.scheduler).from_config(model.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
