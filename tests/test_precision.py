"""Reduced precision on CPU: the latent state and the relevance arithmetic stay float32 whatever dtype the
UNet runs in, and the relevance map under float16 autocast tracks the float32 one (the research profile's
CUDA default is float16; bfloat16 does not reach this, see docs/models.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PROMPT = "Add the finding of left pleural effusion."


@lru_cache(maxsize=1)
def _demo_editor() -> Any:
    from editor.demo import demo_model_path
    from editor.editor import Editor

    path = demo_model_path()
    if path is None:
        pytest.fail("no demo model in editor/assets/demo-model")
    return Editor.from_pretrained(path, device="cpu", dtype="float32")


def _phantom_tensor() -> Any:
    from editor.preprocess import preprocess
    from editor.training.phantoms import Findings, Patient, expose, render, to_source_image

    patient = Patient.sample(np.random.default_rng([4242, 0]))
    return preprocess(to_source_image(expose(patient, render(patient, Findings(), 128))), 128).model_rgb_tensor()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relevance_under_float16_autocast_correlates_with_float32(seed: int) -> None:
    import torch

    from editor.types import EditParams

    editor, image = _demo_editor(), _phantom_tensor()
    # A zero prior leaves the guidance mask empty: the relevance pass runs, the denoising does not.
    zeros = np.zeros((128, 128), np.float32)
    reference = editor.edit_model_grid(image, PROMPT, zeros, seed=seed, params=EditParams()).relevance_latent
    with torch.autocast("cpu", dtype=torch.float16):
        reduced = editor.edit_model_grid(image, PROMPT, zeros, seed=seed, params=EditParams()).relevance_latent
    assert reduced.dtype == np.float32
    corr = float(np.corrcoef(reference.ravel(), reduced.ravel())[0, 1])
    assert corr >= 0.99, corr


def test_latent_state_stays_float32_with_a_bfloat16_unet(tiny_model_dir: Path) -> None:
    import torch

    from editor.model import load_model, make_generator
    from editor.relevance import relevance_map
    from editor.rse import encode_text, rse_denoise

    m = load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert m.unet.dtype == torch.bfloat16
    image = torch.zeros((1, 3, 128, 128), dtype=torch.bfloat16)
    with torch.inference_mode():
        image_latents = m.vae.encode(image).latent_dist.mode()
        emb = encode_text(m.tokenizer, m.text_encoder, [PROMPT, ""], m.device)
    source = image_latents * m.scaling_factor
    latents = rse_denoise(
        m.unet, type(m.scheduler).from_config(m.scheduler.config),
        prompt_embeds=torch.cat([emb[:1], emb[1:], emb[1:]]), image_latents=image_latents,
        source_latents=source, latent_mask=torch.ones((1, 1, 16, 16)), steps=2, text_guidance=7.5,
        image_guidance=1.5, start="source", blend_timestep="current", generator=make_generator(m.device, 0),
    )
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    r = relevance_map(m.unet, type(m.scheduler).from_config(m.scheduler.config), source_latents=source,
                      image_latents=image_latents, text_embeddings=emb, timestep=800, samples=1,
                      generator=make_generator(m.device, 1))
    assert r.dtype == np.float32 and r.shape == (16, 16) and np.isfinite(r).all()
