"""`TrainConfig`: every setting of a fine-tuning run (`x2x train`), with the research config's defaults
(see editor/training/train.py for what they mean)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class TrainConfig:
    base_model: Path  # local diffusers IP2P folder (model_index.json, unet/, vae/, text_encoder/ ...)
    dataset_dir: Path  # instructions.csv + images/<dicom_id>.png (editor/training/format.py)
    output_dir: Path  # checkpoints/, train_log.jsonl, model/ (the trained diffusers folder)
    resolution: int = 512
    split: str | None = "train"  # None = every row of instructions.csv
    max_steps: int = 6500  # optimizer steps (paper: v1 4,500, v2 6,500; the v2 instructions are the default)
    train_batch_size: int = 4  # per device and micro-batch
    effective_batch_size: int = 1024  # = train_batch_size x accumulation x processes
    gradient_accumulation_steps: int | None = None  # None = derived from effective_batch_size
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = None  # research config: no gradient clipping
    conditioning_dropout: float = 0.05  # each of: text only, image only, both
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on GPU, no on CPU
    cpu: bool = False  # force CPU even when a GPU is present
    seed: int = 0
    checkpoint_every: int = 500  # optimizer steps; 0 = only at the end
    checkpoints_total_limit: int | None = None  # keep at most this many checkpoints (oldest removed)
    resume: str | None = None  # "latest", a checkpoint folder, or None (fresh run)
    log_every: int = 10
    use_ema: bool = True  # research config: EMA of the UNet, exported
    ema_decay: float = 0.9999
    rotation_degrees: float = 2.0  # research config: random rotation +-2 deg, centre crop; 0 = off
    hflip: bool = False
    gradient_checkpointing: bool = False
    allow_tf32: bool = True
    num_workers: int = 0
    trainable: Literal["unet"] = "unet"  # only the UNet is trained (VAE / text encoder frozen)
    model_id: str | None = None  # id written to x2x_model.json; default derived from the output dir
    progress: bool = True  # rich progress bar on the main process
    prediction_type: str | None = None  # None = the base scheduler's
    cache_latents: bool = False  # encode each image once, before training (small datasets; not with hflip
    # or rotation)
    input_profile: str | None = None  # declared in the export; None = the base model's (editor/profiles.py)
