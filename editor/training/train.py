"""Fine-tune the UNet of an InstructPix2Pix model on a MIMIC-EDIT-INSTRUCTION style dataset.

input image = the past study, target = the current study, caption = the instruction. The VAE and the
text encoder stay frozen (the paper fine-tunes the UNet only). Objective: the DDPM training loss with
the scheduler's prediction type (epsilon or v), IP2P conditioning dropout (5 % text only, 5 % image
only, 5 % both: text -> the empty prompt's embedding, image -> zero latents), AdamW at a constant
learning rate, gradient accumulation to an effective batch.

Exact resume. Every random draw of optimizer step `s`, micro-batch `m`, process `r` comes from a
generator seeded with (seed, s, m, r), and the sample order is a function of (seed, epoch); so a run
resumed from a checkpoint (accelerate `save_state`: UNet, AdamW state, EMA, RNG states, plus our
step counter) continues with the same data and the same noise as an uninterrupted run, and reaches
the same weights. Resuming with different data-affecting settings is refused.

Defaults = the research config (train_x2x.yaml of the InstructX2X release): EMA of the UNet on (and
exported), a random rotation of +-2 degrees with a centre crop (the same angle for the past and the
current image of a pair), no gradient clipping, and 6,500 steps (the v2 schedule, for the v2
location/severity instructions `x2x dataset build` writes by default). Each is switchable
(`use_ema`, `rotation_degrees=0`, `max_grad_norm`). The rotation works on an image resized
1/(cos a + sin a) larger than the training resolution, so the centre crop never shows rotated-in
corners.

No horizontal flips by default: a flipped chest radiograph puts the heart on the wrong side and turns
"left pleural effusion" into a right one (the research config flips; this is the one place we differ).
`hflip=True` flips and swaps left/right in the instruction, with a warning.

The exported model's `x2x_model.json` declares its input profile (editor/profiles.py): the base
model's unless `input_profile` says otherwise. The images are square-resized as the research inputs
were, so a model fine-tuned on MIMIC-CXR-JPG keeps the `research` profile of its base.

`cache_latents=True` encodes every image once before training and keeps the VAE's latent moments
(mean and std) in memory; each step then samples the target latent from them with the step's own
generator, as the uncached path does from a fresh encoding. It saves the two VAE encodings per sample
(on 2 CPU cores they cost as much as the UNet step of the phantom demo), at 2 x latent size of memory
per image: meant for small datasets such as the phantoms, not MIMIC-CXR at 512 px.

Run on several GPUs with `accelerate launch -m dicom_node.cli train ...`; effective batch =
per-device batch x accumulation x processes.

The parts: `train_config.py` (the settings), `sample_order.py` (seeded order and noise), `pair_dataset.py`
(images and captions as tensors), `latent_cache.py`, `objective.py` (the frozen parts and the loss),
`run_folder.py` (checkpoints, resume, the loss log), `export.py` (the trained diffusers folder).
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from editor.training.export import export_model
from editor.training.format import read_samples
from editor.training.latent_cache import cached_moments
from editor.training.objective import check_resolution, ip2p_loss, load_frozen, vae_scale_factor
from editor.training.pair_dataset import PairDataset, swap_laterality_words
from editor.training.run_folder import (
    LOG_FILE,
    MODEL_DIR,
    append_log,
    read_loss_log,
    resolve_resume,
    resume_step,
    save_checkpoint,
    settings_fingerprint,
    truncate_log,
)
from editor.training.sample_order import MicroBatches, SampleStream, step_seed
from editor.training.train_config import TrainConfig

log = logging.getLogger("x2x.train")


def _resolve_accumulation(cfg: TrainConfig, nproc: int) -> int:
    if cfg.gradient_accumulation_steps is not None:
        return max(1, cfg.gradient_accumulation_steps)
    per_step = cfg.train_batch_size * nproc
    accum = max(1, round(cfg.effective_batch_size / per_step))
    if accum * per_step != cfg.effective_batch_size:
        log.warning("effective batch %d is not a multiple of %d (batch %d x %d processes): using %d",
                    cfg.effective_batch_size, per_step, cfg.train_batch_size, nproc, accum * per_step)
    return accum


def _mixed_precision(cfg: TrainConfig) -> str:
    import torch

    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if cfg.cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) a fine-tuning run; returns the trained diffusers folder `<output_dir>/model`."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers import UNet2DConditionModel

    if cfg.trainable != "unet":
        raise ValueError("only trainable='unet' is supported: the VAE and text encoder stay frozen")
    base, out = Path(cfg.base_model), Path(cfg.output_dir)
    if not (base / "model_index.json").exists():
        raise FileNotFoundError(f"{base} is not a diffusers folder (no model_index.json)")
    if cfg.hflip and cfg.cache_latents:
        raise ValueError("cache_latents cannot be combined with hflip: the cache holds unflipped images")
    if cfg.rotation_degrees and cfg.cache_latents:
        raise ValueError("cache_latents cannot be combined with rotation: the cache holds unrotated images "
                         "(set rotation_degrees=0 / --rotation 0)")
    if cfg.rotation_degrees < 0 or cfg.rotation_degrees >= 45:
        raise ValueError(f"rotation_degrees must be in [0, 45), got {cfg.rotation_degrees}")
    if cfg.input_profile is not None:
        from editor.profiles import get_profile

        get_profile(cfg.input_profile)  # an unknown name fails before any work
    if cfg.hflip:
        warnings.warn("hflip=True: horizontal flips mirror the heart and swap left/right anatomy; the "
                      "instruction's left/right words are swapped to match", stacklevel=2)
    resume_dir = resolve_resume(cfg)
    precision = _mixed_precision(cfg)
    accelerator = Accelerator(mixed_precision=precision, cpu=cfg.cpu)
    try:
        return _run(cfg, accelerator, base, out, resume_dir, precision, torch, UNet2DConditionModel)
    finally:
        accelerator.free_memory()
        AcceleratorState._reset_state()  # let a later train() in this process pick other settings


def _run(cfg: TrainConfig, accelerator: Any, base: Path, out: Path, resume_dir: Path | None,
         precision: str, torch: Any, unet_cls: Any) -> Path:
    device = accelerator.device
    nproc, rank = accelerator.num_processes, accelerator.process_index
    if cfg.allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    torch.manual_seed(cfg.seed)
    unet = unet_cls.from_pretrained(str(base), subfolder="unet", local_files_only=True)
    frozen = load_frozen(base, device, weight_dtype, cfg.prediction_type)
    check_resolution(cfg.resolution, frozen.vae, unet)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    samples = read_samples(cfg.dataset_dir, split=cfg.split)
    if not samples:
        raise ValueError(f"no samples with split={cfg.split!r} in {cfg.dataset_dir}")
    moments = cached_moments(cfg, base, out, frozen.vae, samples, device) if cfg.cache_latents else None
    dataset = PairDataset(Path(cfg.dataset_dir), samples, cfg.resolution, frozen.tokenizer, moments,
                          rotation_degrees=cfg.rotation_degrees)
    accum = _resolve_accumulation(cfg, nproc)
    fingerprint = settings_fingerprint(cfg, accum, nproc, frozen.noise_scheduler.config.prediction_type, len(samples))
    fingerprint["mixed_precision"] = precision  # as resolved: "auto" may mean bf16 here and fp32 there

    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
    )
    ema = None
    if cfg.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, model_cls=unet_cls, model_config=unet.config)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    unet, optimizer = accelerator.prepare(unet, optimizer)

    start_step = 0
    if resume_dir is not None:
        saved_step = resume_step(resume_dir, fingerprint)  # refuses a checkpoint of other settings
        accelerator.load_state(str(resume_dir))
        if ema is not None:
            ema.to(device)  # load_state hands the EMA its shadow weights on the CPU
        start_step = saved_step
        log.info("resumed from %s at step %d", resume_dir, start_step)

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    if accelerator.is_main_process:
        truncate_log(log_path, start_step)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=MicroBatches(SampleStream(len(samples), cfg.seed, cfg.hflip, cfg.rotation_degrees),
                                   batch=cfg.train_batch_size,
                                   accum=accum, nproc=nproc, rank=rank, start=start_step, end=cfg.max_steps),
        collate_fn=dataset.collate, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
    )
    effective = cfg.train_batch_size * accum * nproc
    if accelerator.is_main_process:
        log.info("training %d samples, steps %d..%d, effective batch %d (%d x %d x %d), %s, precision %s",
                 len(samples), start_step, cfg.max_steps, effective, cfg.train_batch_size, accum, nproc,
                 device, precision)

    losses: list[float] = []
    started = time.monotonic()
    step = start_step
    batches = iter(loader)
    with _progress(cfg.progress and accelerator.is_main_process, start_step, cfg.max_steps) as advance:
        while step < cfg.max_steps:
            step_loss = torch.zeros((), device=device)
            for micro in range(accum):
                batch = next(batches)
                gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, micro, rank))
                sync = accelerator.no_sync(unet) if (micro < accum - 1 and nproc > 1) else nullcontext()
                with sync:
                    loss = ip2p_loss(unet, frozen, batch, gen, conditioning_dropout=cfg.conditioning_dropout,
                                     device=device)
                    accelerator.backward(loss / accum)
                step_loss += loss.detach() / accum
            if cfg.max_grad_norm is not None:
                accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(unet.parameters())
            step += 1
            mean_loss = float(accelerator.reduce(step_loss, "mean").item() if nproc > 1 else step_loss.item())
            losses.append(mean_loss)
            advance(mean_loss)
            if accelerator.is_main_process and (step % max(1, cfg.log_every) == 0 or step == cfg.max_steps):
                append_log(log_path, {"step": step, "loss": mean_loss, "lr": cfg.learning_rate,
                                      "elapsed_s": round(time.monotonic() - started, 3)})
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.max_steps:
                save_checkpoint(accelerator, out, step, fingerprint, cfg.checkpoints_total_limit)

    accelerator.wait_for_everyone()
    model_dir = out / MODEL_DIR
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.store(final.parameters())
            ema.copy_to(final.parameters())
        export_model(cfg, base, model_dir, final, summary={
            "steps": step, "resumed_from_step": start_step if resume_dir else None,
            "samples": len(samples), "split": cfg.split, "effective_batch_size": effective,
            "train_batch_size": cfg.train_batch_size, "gradient_accumulation_steps": accum,
            "num_processes": nproc, "learning_rate": cfg.learning_rate, "lr_schedule": "constant",
            "mixed_precision": precision, "ema": cfg.use_ema, "hflip": cfg.hflip, "seed": cfg.seed,
            "rotation_degrees": cfg.rotation_degrees, "max_grad_norm": cfg.max_grad_norm,
            "conditioning_dropout": cfg.conditioning_dropout,
            "prediction_type": frozen.noise_scheduler.config.prediction_type,
            "final_loss": losses[-1] if losses else None,
            "mean_loss_last_10": float(np.mean(losses[-10:])) if losses else None,
            "wall_s_this_run": round(time.monotonic() - started, 2),
        })
        if ema is not None:
            ema.restore(final.parameters())
    accelerator.wait_for_everyone()
    return model_dir


class _progress:
    """A rich progress bar with the latest loss, or nothing (tests, other processes)."""

    def __init__(self, enabled: bool, start: int, total: int) -> None:
        self.enabled, self.start, self.total = enabled, start, total
        self._bar: Any = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not self.enabled:
            return lambda loss: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        # stderr: stdout carries the command's result line only
        self._bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             TextColumn("loss {task.fields[loss]}"), console=Console(stderr=True))
        self._bar.__enter__()
        task = self._bar.add_task("train", total=self.total, completed=self.start, loss="-")
        return lambda loss: self._bar.update(task, advance=1, loss=f"{loss:.4f}")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


# --------------------------------------------------------------------------------------------------
# A fixed-batch loss, for validation and tests


def fixed_batch_loss(model_dir: str | Path, dataset_dir: str | Path, *, resolution: int,
                     split: str | None = "train", max_samples: int = 8, seed: int = 1234,
                     repeats: int = 4) -> float:
    """Mean IP2P loss of a model's UNet on the first `max_samples` rows, with fixed noise and timesteps
    and no conditioning dropout: comparable between checkpoints (lower = better fit)."""
    import torch
    from diffusers import UNet2DConditionModel

    model_dir = Path(model_dir)
    device = torch.device("cpu")
    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet", local_files_only=True)
    unet.eval()
    frozen = load_frozen(model_dir, device, torch.float32, None)
    samples = read_samples(dataset_dir, split=split)[:max_samples]
    ds = PairDataset(Path(dataset_dir), samples, resolution, frozen.tokenizer)
    batch = ds.collate([ds[(i, False)] for i in range(len(samples))])
    total = 0.0
    with torch.no_grad():
        for r in range(repeats):
            gen = torch.Generator().manual_seed(step_seed(seed, r))
            total += float(ip2p_loss(unet, frozen, batch, gen, conditioning_dropout=0.0, device=device))
    return total / repeats


__all__ = ["PairDataset", "TrainConfig", "train", "fixed_batch_loss", "read_loss_log", "swap_laterality_words",
           "vae_scale_factor"]
