"""What a training run keeps in its output folder, and exact resume from it: `checkpoints/step-N`
(accelerate's `save_state`: UNet, AdamW state, EMA, RNG states, plus `trainer_state.json` with the step
and the fingerprint of the settings that change what a step sees), `train_log.jsonl` (the loss log,
cut back to the resume point so it reads as one run), `latent_cache.pt` and the exported `model/`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from editor.training.train_config import TrainConfig

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.json"
LATENT_CACHE = "latent_cache.pt"

# Settings that change what a step sees; resuming with different values would not be exact.
RESUME_KEYS = (
    "resolution", "train_batch_size", "gradient_accumulation_steps", "learning_rate", "seed",
    "conditioning_dropout", "hflip", "split", "use_ema", "mixed_precision", "prediction_type",
    "cache_latents", "rotation_degrees", "max_grad_norm",
)
# What a checkpoint written before a key existed was trained with.
_LEGACY_FINGERPRINT = {"rotation_degrees": 0.0, "max_grad_norm": 1.0}


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)
             and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        dirs = checkpoint_dirs(Path(cfg.output_dir))
        return dirs[-1] if dirs else None  # nothing to resume yet: start fresh
    path = Path(cfg.resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no {STATE_FILE})")
    return path


def settings_fingerprint(cfg: TrainConfig, accum: int, nproc: int, prediction_type: str, n_samples: int) -> dict:
    d = {k: getattr(cfg, k) for k in RESUME_KEYS if hasattr(cfg, k)}
    d.update(gradient_accumulation_steps=accum, num_processes=nproc, prediction_type=prediction_type,
             n_samples=n_samples)
    return json.loads(json.dumps(d, default=str))


def resume_step(resume_dir: Path, fingerprint: dict) -> int:
    """The step checkpoint `resume_dir` was saved at, once its settings fingerprint is checked against
    this run's: resuming with different data-affecting settings would not be exact, and is refused."""
    state = json.loads((resume_dir / STATE_FILE).read_text())
    saved = {**_LEGACY_FINGERPRINT, **state["fingerprint"]}
    diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if diff:
        raise ValueError(f"cannot resume {resume_dir} exactly: settings differ (checkpoint, now): {diff}")
    return int(state["step"])


def save_checkpoint(accelerator: Any, out: Path, step: int, fingerprint: dict, limit: int | None) -> None:
    ckpt = out / CHECKPOINTS_DIR / f"step-{step:07d}"
    accelerator.save_state(str(ckpt))
    if accelerator.is_main_process:
        (ckpt / STATE_FILE).write_text(json.dumps({"step": step, "fingerprint": fingerprint}, indent=2))
        if limit:
            for old in checkpoint_dirs(out)[:-limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resume point, so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def read_loss_log(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / LOG_FILE
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
