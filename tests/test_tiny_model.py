"""The tiny random-weight fixture model: small, deterministic, loadable offline by diffusers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_init_tiny_cli_is_small_and_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        out = subprocess.run(
            [sys.executable, "-m", "dicom_node.cli", "model", "init-tiny", str(tmp_path / name), "--seed", "3"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert "NOT a medical model" in out.stdout
    size = sum(f.stat().st_size for f in (tmp_path / "a").rglob("*") if f.is_file())
    assert size < 20e6
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    from editor.tiny import init_tiny_model

    other = init_tiny_model(tmp_path / "c", seed=4)
    assert _digest(other)["unet/diffusion_pytorch_model.safetensors"] != _digest(tmp_path / "a")[
        "unet/diffusion_pytorch_model.safetensors"
    ]


def test_tiny_model_runs_a_2_step_ip2p_edit_offline(tiny_model_dir: Path) -> None:
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    assert pipe.unet.config.in_channels == 8
    assert pipe.vae_scale_factor == 8
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((512, 512, 3)) * 255).astype("uint8"))
    latents = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode()
    assert tuple(latents.shape[-2:]) == (64, 64)
    out = pipe(
        "Add the finding of pleural effusion.",
        image=image,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert out.shape == (512, 512, 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_byte_tokenizer_round_trips_any_text(tiny_model_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_model_dir / "tokenizer"), local_files_only=True)
    assert tok.model_max_length == 77
    ids = tok("Add the finding of small left pleural effusion.", padding="max_length", truncation=True).input_ids
    assert len(ids) == 77
    text = "Remove the finding of cardiomegaly."
    decoded = tok.decode(tok(text).input_ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")


@pytest.mark.parametrize("bad_seed", ["x"])
def test_init_tiny_rejects_bad_seed(tmp_path: Path, bad_seed: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "model", "init-tiny", str(tmp_path / "m"), "--seed", bad_seed],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
