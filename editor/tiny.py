"""A tiny random-weight InstructPix2Pix model, built offline, for tests only.

It has the real architecture's *shape* (UNet with 8 input channels, VAE with 8x downsampling,
CLIP text encoder, DDIM) so every code path runs, but its weights are random: its edits are
noise-like and carry no medical meaning. The model id says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from editor.profiles import PROJECT_PROFILE

TINY_MODEL_ID = "x2x-tiny-random-fixture"

# CLIP's reversible byte -> printable-unicode map (as in GPT-2/CLIP BPE), so a byte-level
# vocabulary without merges tokenises any text without downloading the real vocabulary.
def _bytes_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + shift)
            shift += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


def write_byte_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer with 256 byte tokens, their `</w>` variants and start/end tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2)
    )


def init_tiny_model(out_dir: str | Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Write a tiny random IP2P diffusers folder to `out_dir` (deterministic for `seed`)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    write_byte_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77, local_files_only=True)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=8,  # 4 noisy latents + 4 image latents (InstructPix2Pix)
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    # Four blocks give the real 8x downsampling: 512x512 -> 64x64 latents.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size * 8,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    from editor.model import research_scheduler

    scheduler = research_scheduler()
    # Models built in code start in training mode; save them in eval mode so reloads agree.
    for module in (unet, vae, text_encoder):
        module.eval()
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    (out / "x2x_model.json").write_text(
        json.dumps(
            {
                "model_id": TINY_MODEL_ID,
                "kind": "fixture",
                "seed": seed,
                "resolution": sample_size * 8,
                # Random weights were never trained on anything: keep the project's own way of feeding
                # images (display window, aspect kept) so its tests exercise that path.
                "input_profile": PROJECT_PROFILE.name,
                "warning": "Random weights. Edits are meaningless noise. For tests only, never for patients.",
            },
            indent=2,
        )
    )
    return out
