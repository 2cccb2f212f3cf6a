"""The phantom demo model's whole recipe: phantoms -> VAE -> IP2P UNet via `train()` (`x2x model build-demo`).

1. `write_dataset`: longitudinal phantom pairs in the MIMIC-EDIT-INSTRUCTION layout (seed 0).
2. `train_vae`: a 4-block AutoencoderKL (8x downsampling) trained to reconstruct the phantoms.
3. A base IP2P folder: a randomly initialised small UNet (8 input channels), the trained VAE, a frozen
   random tiny CLIP text encoder with the byte-level tokenizer of editor/tiny.py (distinct instructions
   get distinct embeddings; the UNet's cross-attention learns what they mean) and a DDIM scheduler.
4. `editor.training.train.train`: the same UNet-only IP2P training as `x2x train`, on the phantom pairs
   (their latents encoded once, `cache_latents`).
5. x2x_model.json says what the model is (a phantom demo) and how it was made.

Every step is seeded. `time_budget_s` trains the UNet in chunks (resuming exactly from the last
checkpoint) and stops when the next chunk would not fit; the steps actually done are recorded.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from editor.demo import DEMO_INPUT_PROFILE, DEMO_KIND, DEMO_MODEL_ID, DEMO_WARNING
from editor.training.vae import VAEConfig, load_images, train_vae

log = logging.getLogger("x2x.train.demo")


@dataclass(frozen=True)
class DemoRecipe:
    """Defaults = the recipe of the shipped model, sized for 2 CPU cores (measured there: see
    docs/demo-model.md). The same recipe runs on a GPU in minutes.

    What makes it fit a CPU: an 8x VAE (128 px -> 16x16 latents, so the UNet computes on a quarter of
    the positions a 4x VAE gives), narrow first VAE blocks (16, 32) where the image is largest, and
    latents encoded once before UNet training (`cache_latents`) instead of twice per sample per step.
    The first demo model (v1: 4x VAE, batch 64 x 2,000 steps on a GPU) did not fit: its CPU variant,
    batch 8 x 2,000 steps, never learnt the edit."""

    resolution: int = 128
    n_pairs: int = 3000
    phantom_seed: int = 0
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet_block_out_channels: tuple[int, ...] = (64, 96, 128)
    text_hidden_size: int = 64
    unet_steps: int = 3000
    unet_batch_size: int = 16
    learning_rate: float = 5e-4
    seed: int = 0
    chunk_steps: int = 1000  # UNet steps between resumable checkpoints (and time-budget checks)
    time_budget_s: float | None = None  # UNet training wall-clock budget; None = all unet_steps
    num_workers: int = 0  # data-loader processes (results do not depend on it)
    cache_latents: bool = True  # encode the phantoms once instead of twice per sample per step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unet(recipe: DemoRecipe) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(recipe.seed)
    latent = recipe.resolution // 2 ** (len(recipe.vae.block_out_channels) - 1)
    return UNet2DConditionModel(
        sample_size=latent,
        in_channels=8,  # 4 noisy latents + 4 image latents (InstructPix2Pix)
        out_channels=4,
        layers_per_block=1,
        block_out_channels=recipe.unet_block_out_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=recipe.text_hidden_size,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_base_model(out_dir: Path, vae: Any, recipe: DemoRecipe) -> Path:
    """The untrained IP2P folder that `train()` fine-tunes (trained VAE, random UNet and text encoder)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from editor.tiny import write_byte_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    write_byte_tokenizer(out_dir / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(out_dir / "tokenizer"), model_max_length=77,
                                              local_files_only=True)
    unet = _unet(recipe)
    torch.manual_seed(recipe.seed + 2)
    h = recipe.text_hidden_size
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    for module in (unet, vae, text_encoder):
        module.eval()  # built in code = training mode; saved in eval mode so reloads agree
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / "x2x_model.json").write_text(json.dumps({
        "model_id": f"{DEMO_MODEL_ID}-untrained-base", "kind": "base", "resolution": recipe.resolution,
        "input_profile": DEMO_INPUT_PROFILE, "warning": "Untrained UNet: edits are noise.",
    }, indent=2))
    return out_dir


def build_demo_model(out_dir: str | Path, recipe: DemoRecipe | None = None, *, device: str = "auto",
                     work_dir: str | Path | None = None, workers: int = 1, progress: bool = True) -> Path:
    """Run the whole recipe; writes the trained diffusers folder to `out_dir` and returns it."""
    import torch

    from editor.training.format import image_path, read_samples
    from editor.training.phantoms import write_dataset
    from editor.training.train import TrainConfig, read_loss_log, train

    recipe = recipe or DemoRecipe()
    out = Path(out_dir)
    if work_dir is None:
        import tempfile

        # Scratch outside the output (the default output is inside the package's assets).
        with tempfile.TemporaryDirectory(prefix="x2x-demo-") as scratch:
            return build_demo_model(out, recipe, device=device, work_dir=scratch, workers=workers,
                                    progress=progress)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    data = work / "phantoms"
    phantoms = write_dataset(data, n=recipe.n_pairs, size=recipe.resolution, seed=recipe.phantom_seed,
                             workers=workers)
    timings["phantoms_s"] = round(time.monotonic() - t0, 2)

    t0 = time.monotonic()
    train_rows = read_samples(data, split="train")
    ids = sorted({d for s in train_rows for d in (s.past_dicom_id, s.current_dicom_id)})
    images = load_images([image_path(data, d) for d in ids], recipe.resolution)
    vae, vae_summary = train_vae(images, recipe.vae, device=device, progress=progress)
    timings["vae_s"] = round(time.monotonic() - t0, 2)
    log.info("VAE: L1 %.4f (image in [0,1]), scaling factor %.4f", vae_summary["eval_l1_01"],
             vae_summary["scaling_factor"])

    base = build_base_model(work / "base", vae, recipe)
    run_dir = work / "unet-run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a rebuild starts fresh: the recipe is the whole history
    t0 = time.monotonic()
    done, chunk_s = 0, 0.0
    while done < recipe.unet_steps:
        target = min(done + recipe.chunk_steps, recipe.unet_steps)
        if recipe.time_budget_s is not None and done and (time.monotonic() - t0) + chunk_s > recipe.time_budget_s:
            log.warning("UNet time budget reached after %d of %d steps", done, recipe.unet_steps)
            break
        c0 = time.monotonic()
        model_dir = train(TrainConfig(
            base_model=base, dataset_dir=data, output_dir=run_dir, resolution=recipe.resolution,
            max_steps=target, train_batch_size=recipe.unet_batch_size, gradient_accumulation_steps=1,
            effective_batch_size=recipe.unet_batch_size, learning_rate=recipe.learning_rate,
            cpu=device == "cpu" or not torch.cuda.is_available(), seed=recipe.seed,
            checkpoint_every=0, checkpoints_total_limit=1, resume="latest", log_every=50,
            num_workers=recipe.num_workers, model_id=DEMO_MODEL_ID, progress=progress,
            cache_latents=recipe.cache_latents,
            # The shipped model's settings (not the research defaults): no EMA, no rotation (latents are
            # cached), gradient clipping at 1.0, the project's input profile.
            use_ema=False, rotation_degrees=0.0, max_grad_norm=1.0, input_profile=DEMO_INPUT_PROFILE,
        ))
        chunk_s = (time.monotonic() - c0) * recipe.chunk_steps / (target - done)
        done = target
    timings["unet_s"] = round(time.monotonic() - t0, 2)

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out)
    meta = json.loads((out / "x2x_model.json").read_text())
    loss_log = read_loss_log(run_dir)
    meta.update({
        "model_id": DEMO_MODEL_ID,
        "kind": DEMO_KIND,
        "resolution": recipe.resolution,
        "input_profile": DEMO_INPUT_PROFILE,
        "warning": DEMO_WARNING,
        "laterality": "trained on PA-convention phantoms: patient's left on the image's right",
        "recipe": {**recipe.to_dict(), "unet_steps_done": done, "device": str(device),
                   "cuda": torch.cuda.is_available() and device != "cpu"},
        "vae_training": vae_summary,
        "phantoms": phantoms,
        "unet_loss_first_last": [loss_log[0]["loss"], loss_log[-1]["loss"]] if loss_log else None,
        "timings": timings,
    })
    meta.pop("config", None)  # TrainConfig holds this machine's temporary paths
    if isinstance(meta.get("training"), dict):
        meta["training"].pop("dataset", None)
    (out / "x2x_model.json").write_text(json.dumps(meta, indent=2, default=str))
    return out
