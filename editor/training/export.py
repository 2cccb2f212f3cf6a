"""The trained model as a whole diffusers folder: the trained UNet, the base model's frozen components
copied as they are, and `x2x_model.json` (id, kind, resolution, the declared input profile, how it was
trained)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from editor.training.train_config import TrainConfig


def export_model(cfg: TrainConfig, base: Path, model_dir: Path, unet: Any, summary: dict) -> None:
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
    from editor.model_identity import declared_input_profile
    from editor.profiles import get_profile

    if cfg.input_profile is not None:
        return get_profile(cfg.input_profile).name
    return declared_input_profile(base)
