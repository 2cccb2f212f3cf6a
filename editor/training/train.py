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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from editor.training.format import Sample, image_path, read_samples

if TYPE_CHECKING:
    import torch

log = logging.getLogger("x2x.train")

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.json"
LATENT_CACHE = "latent_cache.pt"

# Settings that change what a step sees; resuming with different values would not be exact.
_RESUME_KEYS = (
    "resolution", "train_batch_size", "gradient_accumulation_steps", "learning_rate", "seed",
    "conditioning_dropout", "hflip", "split", "use_ema", "mixed_precision", "prediction_type",
    "cache_latents", "rotation_degrees", "max_grad_norm",
)
# What a checkpoint written before a key existed was trained with.
_LEGACY_FINGERPRINT = {"rotation_degrees": 0.0, "max_grad_norm": 1.0}


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


# --------------------------------------------------------------------------------------------------
# Deterministic randomness and data order


def _step_seed(seed: int, *parts: int) -> int:
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class _SampleStream:
    """The infinite, seeded sample order: position p -> (row index, flip, rotation angle) for epoch p // n."""

    def __init__(self, n: int, seed: int, hflip: bool, rotation_degrees: float = 0.0) -> None:
        self.n, self.seed, self.hflip, self.rotation = n, seed, hflip, float(rotation_degrees)
        self._epoch = -1
        self._perm = np.arange(n)
        self._flips = np.zeros(n, dtype=bool)
        self._angles = np.zeros(n)

    def item(self, position: int) -> tuple[int, bool, float]:
        epoch, within = divmod(position, self.n)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n)
            self._flips = (rng.random(self.n) < 0.5) if self.hflip else np.zeros(self.n, dtype=bool)
            # A stream of its own, so the order and flips are those of a run without rotation.
            angles = np.random.default_rng([self.seed, epoch, 2]).uniform(-1.0, 1.0, self.n) * self.rotation
            self._angles = angles if self.rotation > 0 else np.zeros(self.n)
            self._epoch = epoch
        return int(self._perm[within]), bool(self._flips[within]), float(self._angles[within])


class _MicroBatches:
    """Batch sampler yielding the micro-batches of optimizer steps [start, end) for one process."""

    def __init__(self, stream: _SampleStream, *, batch: int, accum: int, nproc: int, rank: int,
                 start: int, end: int) -> None:
        self.stream, self.batch, self.accum, self.nproc, self.rank = stream, batch, accum, nproc, rank
        self.start, self.end = start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accum

    def __iter__(self):  # type: ignore[no-untyped-def]
        for step in range(self.start, self.end):
            for micro in range(self.accum):
                g = (step * self.accum + micro) * self.nproc + self.rank
                yield [self.stream.item(g * self.batch + j) for j in range(self.batch)]


_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_laterality_words(text: str) -> str:
    """'left' <-> 'right' (case kept): the instruction that matches a horizontally flipped image."""

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _SIDE.sub(swap, text)


def load_gray(path: Path, resolution: int) -> np.ndarray:
    """8/16-bit grayscale PNG -> float32 (res, res) in [0, 1] (bilinear resize when needed)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
        if arr.ndim == 3:  # an RGB(A) export of a grayscale image: take luminance
            arr = np.asarray(im.convert("L"))
        scale = 65535.0 if arr.dtype == np.uint16 else 255.0
        img = arr.astype(np.float32) / scale
    if img.shape != (resolution, resolution):
        img = np.asarray(
            Image.fromarray(img, mode="F").resize((resolution, resolution), Image.Resampling.BILINEAR)
        )
    return img


def rotation_margin(degrees: float) -> float:
    """How much larger an image must be so that its centre crop survives a rotation by +-degrees without
    rotated-in corners: 1 / (cos a + sin a)."""
    a = math.radians(abs(float(degrees)))
    return 1.0 / (math.cos(a) + math.sin(a))


def load_rotated(path: Path, resolution: int, angle: float, max_degrees: float) -> np.ndarray:
    """The image resized 1/margin(max_degrees) larger, rotated by `angle` about its centre (bilinear),
    centre-cropped to (resolution, resolution). The enlargement depends on the largest angle only, so
    every sample has the same scale whatever its own angle."""
    from PIL import Image

    big = int(math.ceil(resolution / rotation_margin(max_degrees)))
    big += (big - resolution) % 2  # an even border on each side
    img = load_gray(path, big)
    if angle:
        img = np.asarray(Image.fromarray(img, mode="F").rotate(angle, resample=Image.Resampling.BILINEAR))
    off = (big - resolution) // 2
    return np.ascontiguousarray(img[off: off + resolution, off: off + resolution])


def _image_tensor(a: np.ndarray) -> torch.Tensor:
    """(H, W) in [0, 1] -> (3, H, W) in [-1, 1]: grayscale replicated to RGB, as the VAE expects."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a) * 2.0 - 1.0)
    return t.unsqueeze(0).expand(3, -1, -1)


class PairDataset:
    """(past image, current image, instruction) triples as 3-channel tensors in [-1, 1] -- or, with
    `moments` (dicom id -> the VAE's latent mean and log-variance, from `encode_moments`), the two
    images' cached latent moments instead of their pixels."""

    def __init__(self, dataset_dir: Path, samples: list[Sample], resolution: int, tokenizer: Any,
                 moments: dict[str, torch.Tensor] | None = None, rotation_degrees: float = 0.0) -> None:
        self.dir, self.samples, self.resolution, self.tokenizer = dataset_dir, samples, resolution, tokenizer
        self.moments = moments
        self.rotation_degrees = float(rotation_degrees)
        missing = [
            d for s in samples for d in (s.past_dicom_id, s.current_dicom_id)
            if not image_path(dataset_dir, d).exists()
        ]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) missing under {dataset_dir}/images, e.g. {missing[0]}.png"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, bool] | tuple[int, bool, float]) -> dict[str, Any]:
        index, flip = key[0], key[1]
        angle = float(key[2]) if len(key) > 2 else 0.0
        s = self.samples[index]
        if self.moments is not None:
            if flip or angle:
                raise ValueError("cached latents cannot be flipped or rotated (cache_latents with hflip or "
                                 "rotation is refused)")
            return {"past_moments": self.moments[s.past_dicom_id],
                    "current_moments": self.moments[s.current_dicom_id], "text": s.instruction}
        if self.rotation_degrees > 0:  # one angle for both images of the pair
            past = load_rotated(image_path(self.dir, s.past_dicom_id), self.resolution, angle,
                                self.rotation_degrees)
            current = load_rotated(image_path(self.dir, s.current_dicom_id), self.resolution, angle,
                                   self.rotation_degrees)
        else:
            past = load_gray(image_path(self.dir, s.past_dicom_id), self.resolution)
            current = load_gray(image_path(self.dir, s.current_dicom_id), self.resolution)
        text = s.instruction
        if flip:
            past, current = past[:, ::-1], current[:, ::-1]
            text = swap_laterality_words(text)
        return {"past": _image_tensor(past), "current": _image_tensor(current), "text": text}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = self.tokenizer(
            [it["text"] for it in items], max_length=_max_length(self.tokenizer), padding="max_length",
            truncation=True, return_tensors="pt",
        ).input_ids
        tensors = [k for k in items[0] if k != "text"]
        return {**{k: torch.stack([it[k] for it in items]).contiguous() for k in tensors}, "input_ids": ids}


def encode_moments(vae: Any, dataset_dir: Path, samples: list[Sample], resolution: int, device: Any, *,
                   chunk: int = 64) -> dict[str, torch.Tensor]:
    """dicom id -> the VAE posterior's parameters (mean and log-variance stacked on the channel axis, as
    diffusers' DiagonalGaussianDistribution holds them), on the CPU in float32."""
    import torch

    ids = sorted({d for s in samples for d in (s.past_dicom_id, s.current_dicom_id)})
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            x = torch.stack([_image_tensor(load_gray(image_path(dataset_dir, d), resolution)) for d in part])
            params = vae.encode(x.to(device, dtype=vae.dtype)).latent_dist.parameters.float().cpu()
            out.update(zip(part, params, strict=True))
    return out


def _max_length(tokenizer: Any) -> int:
    n = int(getattr(tokenizer, "model_max_length", 77) or 77)
    return 77 if n > 10_000 else n  # transformers 5 reports 1e30 when the config does not say


# --------------------------------------------------------------------------------------------------
# Model pieces


@dataclass
class _Frozen:
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    empty_embedding: Any  # (1, L, D) embedding of "" (the dropped-text condition)
    weight_dtype: Any


def _load_frozen(base: Path, device: Any, weight_dtype: Any, prediction_type: str | None) -> _Frozen:
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
        ids = tokenizer([""], max_length=_max_length(tokenizer), padding="max_length", truncation=True,
                        return_tensors="pt").input_ids.to(device)
        empty = text_encoder(ids)[0]
    return _Frozen(vae, text_encoder, tokenizer, sched, empty, weight_dtype)


def vae_scale_factor(vae: Any) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def _check_resolution(resolution: int, vae: Any, unet: Any) -> None:
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    multiple = vae_scale_factor(vae) * unet_factor
    if resolution % multiple:
        raise ValueError(f"resolution {resolution} must be a multiple of {multiple} "
                         f"(VAE factor {vae_scale_factor(vae)} x UNet downsampling {unet_factor})")


def ip2p_loss(
    unet: Any, frozen: _Frozen, batch: dict[str, Any], generator: torch.Generator, *,
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


def _cached_moments(cfg: TrainConfig, base: Path, out: Path, vae: Any, samples: list[Sample],
                    device: Any) -> dict[str, torch.Tensor]:
    """The latent moments of every image, kept in `<output_dir>/latent_cache.pt` so that a resumed run
    (or the next chunk of one) does not encode again; reused only for the same VAE, resolution and ids."""
    import torch

    vae_files = sorted((base / "vae").glob("*.safetensors")) or sorted((base / "vae").glob("*.bin"))
    digest = hashlib.sha256()
    for f in vae_files:
        digest.update(f.read_bytes())
    ids = sorted({d for s in samples for d in (s.past_dicom_id, s.current_dicom_id)})
    key = {"vae_sha256": digest.hexdigest(), "resolution": cfg.resolution, "dtype": str(vae.dtype),
           "dataset": str(Path(cfg.dataset_dir).resolve()),
           "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    path = out / LATENT_CACHE
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            log.info("latent cache: reusing %d images from %s", len(stored["moments"]), path)
            return dict(stored["moments"])
    t0 = time.monotonic()
    moments = encode_moments(vae, Path(cfg.dataset_dir), samples, cfg.resolution, device)
    log.info("latent cache: encoded %d images in %.1f s", len(moments), time.monotonic() - t0)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several processes may write it at once
    torch.save({"key": key, "moments": moments}, tmp)
    tmp.replace(path)
    return moments


# --------------------------------------------------------------------------------------------------
# The training run


def _resolve_accumulation(cfg: TrainConfig, nproc: int) -> int:
    if cfg.gradient_accumulation_steps is not None:
        return max(1, cfg.gradient_accumulation_steps)
    per_step = cfg.train_batch_size * nproc
    accum = max(1, round(cfg.effective_batch_size / per_step))
    if accum * per_step != cfg.effective_batch_size:
        log.warning("effective batch %d is not a multiple of %d (batch %d x %d processes): using %d",
                    cfg.effective_batch_size, per_step, cfg.train_batch_size, nproc, accum * per_step)
    return accum


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)
             and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _resolve_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        dirs = _checkpoint_dirs(Path(cfg.output_dir))
        return dirs[-1] if dirs else None  # nothing to resume yet: start fresh
    path = Path(cfg.resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no {STATE_FILE})")
    return path


def _fingerprint(cfg: TrainConfig, accum: int, nproc: int, prediction_type: str, n_samples: int) -> dict:
    d = {k: getattr(cfg, k) for k in _RESUME_KEYS if hasattr(cfg, k)}
    d.update(gradient_accumulation_steps=accum, num_processes=nproc, prediction_type=prediction_type,
             n_samples=n_samples)
    return json.loads(json.dumps(d, default=str))


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
    resume_dir = _resolve_resume(cfg)
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
    frozen = _load_frozen(base, device, weight_dtype, cfg.prediction_type)
    _check_resolution(cfg.resolution, frozen.vae, unet)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    samples = read_samples(cfg.dataset_dir, split=cfg.split)
    if not samples:
        raise ValueError(f"no samples with split={cfg.split!r} in {cfg.dataset_dir}")
    moments = _cached_moments(cfg, base, out, frozen.vae, samples, device) if cfg.cache_latents else None
    dataset = PairDataset(Path(cfg.dataset_dir), samples, cfg.resolution, frozen.tokenizer, moments,
                          rotation_degrees=cfg.rotation_degrees)
    accum = _resolve_accumulation(cfg, nproc)
    fingerprint = _fingerprint(cfg, accum, nproc, frozen.noise_scheduler.config.prediction_type, len(samples))
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
        state = json.loads((resume_dir / STATE_FILE).read_text())
        saved = {**_LEGACY_FINGERPRINT, **state["fingerprint"]}
        diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
        if diff:
            raise ValueError(f"cannot resume {resume_dir} exactly: settings differ (checkpoint, now): {diff}")
        accelerator.load_state(str(resume_dir))
        if ema is not None:
            ema.to(device)  # load_state hands the EMA its shadow weights on the CPU
        start_step = int(state["step"])
        log.info("resumed from %s at step %d", resume_dir, start_step)

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    if accelerator.is_main_process:
        _truncate_log(log_path, start_step)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=_MicroBatches(_SampleStream(len(samples), cfg.seed, cfg.hflip, cfg.rotation_degrees),
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
                gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step, micro, rank))
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
                _append_log(log_path, {"step": step, "loss": mean_loss, "lr": cfg.learning_rate,
                                       "elapsed_s": round(time.monotonic() - started, 3)})
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.max_steps:
                _save_checkpoint(accelerator, out, step, fingerprint, cfg.checkpoints_total_limit)

    accelerator.wait_for_everyone()
    model_dir = out / MODEL_DIR
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.store(final.parameters())
            ema.copy_to(final.parameters())
        _export(cfg, base, model_dir, final, summary={
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


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resume point, so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _save_checkpoint(accelerator: Any, out: Path, step: int, fingerprint: dict, limit: int | None) -> None:
    ckpt = out / CHECKPOINTS_DIR / f"step-{step:07d}"
    accelerator.save_state(str(ckpt))
    if accelerator.is_main_process:
        (ckpt / STATE_FILE).write_text(json.dumps({"step": step, "fingerprint": fingerprint}, indent=2))
        if limit:
            for old in _checkpoint_dirs(out)[:-limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _export(cfg: TrainConfig, base: Path, model_dir: Path, unet: Any, summary: dict) -> None:
    """The whole pipeline: trained UNet + the base's frozen components + x2x_model.json."""
    index = json.loads((base / "model_index.json").read_text())
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    shutil.copy2(base / "model_index.json", model_dir / "model_index.json")
    for name, spec in index.items():
        if name.startswith("_") or name == "unet" or not isinstance(spec, list) or spec[0] is None:
            continue
        if (base / name).is_dir():
            shutil.copytree(base / name, model_dir / name)
    unet.save_pretrained(str(model_dir / "unet"), safe_serialization=True)
    base_meta: dict = {}
    if (base / "x2x_model.json").exists():
        base_meta = json.loads((base / "x2x_model.json").read_text())
    weights = (model_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    model_id = cfg.model_id or f"x2x-finetuned-{Path(cfg.output_dir).name}-{hashlib.sha256(weights).hexdigest()[:8]}"
    meta = {
        "model_id": model_id,
        "kind": "finetuned",
        "resolution": cfg.resolution,
        "input_profile": _export_profile(cfg, base),
        "base_model": base_meta.get("model_id", base.name),
        "trainable": cfg.trainable,
        "training": {**summary, "dataset": str(cfg.dataset_dir)},
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        "warning": "Research model. Every image it produces is synthetic; not for diagnosis.",
    }
    (model_dir / "x2x_model.json").write_text(json.dumps(meta, indent=2))


def _export_profile(cfg: TrainConfig, base: Path) -> str:
    """The input profile the trained model declares: the config's, else the base model's."""
    from editor.model import declared_input_profile
    from editor.profiles import get_profile

    if cfg.input_profile is not None:
        return get_profile(cfg.input_profile).name
    return declared_input_profile(base)


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
    frozen = _load_frozen(model_dir, device, torch.float32, None)
    samples = read_samples(dataset_dir, split=split)[:max_samples]
    ds = PairDataset(Path(dataset_dir), samples, resolution, frozen.tokenizer)
    batch = ds.collate([ds[(i, False)] for i in range(len(samples))])
    total = 0.0
    with torch.no_grad():
        for r in range(repeats):
            gen = torch.Generator().manual_seed(_step_seed(seed, r))
            total += float(ip2p_loss(unet, frozen, batch, gen, conditioning_dropout=0.0, device=device))
    return total / repeats


def read_loss_log(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / LOG_FILE
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


__all__ = ["TrainConfig", "train", "fixed_batch_loss", "read_loss_log", "swap_laterality_words",
           "vae_scale_factor"]
