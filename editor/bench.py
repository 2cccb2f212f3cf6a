"""Benchmark: our RSE loop against diffusers' StableDiffusionInstructPix2PixPipeline, same components.

Both loops run in the same process on the same UNet / VAE / text encoder / scheduler config, input and
seed. Step times are measured between consecutive step ends (so prompt encoding, VAE encode and the
first step are excluded from both); runs are interleaved and repeated, and the median of all
individual step times is reported.
`arch="sd15"` builds random weights of the Stable Diffusion 1.5 InstructPix2Pix size in memory (no
download), so GPU timings are real without the released checkpoint.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from editor.model import (
    LoadedModel,
    load_model,
    make_generator,
    pipeline_from_model,
    research_scheduler,
    resolve_device,
    resolve_dtype,
)
from editor.relevance import relevance_map
from editor.rse import encode_text, rse_denoise

BENCH_PROMPT = "Add the finding of pleural effusion."


def build_sd15_random(device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Random-weight SD1.5-size IP2P components (UNet 860M, CLIP-L text encoder, SD VAE), in memory."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from editor.tiny import write_byte_tokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    with tempfile.TemporaryDirectory() as tmp:
        write_byte_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, local_files_only=True)
    torch.manual_seed(0)
    with torch.device(torch_device):  # initialise on the device: fast on a GPU, no host copy
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=8,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    for module in (unet, vae, text_encoder):
        # nn.Module.to: diffusers' own .to() warns about a float32-keep list that is empty here.
        torch.nn.Module.to(module, device=torch_device, dtype=torch_dtype)
        module.eval()
        module.requires_grad_(False)
    scheduler = research_scheduler()
    return LoadedModel(
        vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        model_id="random-sd15-size-ip2p", weights_hash="none:random-in-memory", resolution=512,
        device=torch_device, dtype=torch_dtype, kind="bench-random",
    )


class _StepTimer:
    """Timestamps at the end of each step (after a CUDA sync); per-step durations from the 2nd step on."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []  # process CPU time: robust to other jobs on a shared CPU

    def __call__(self, *_: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]

    def cpu_durations(self) -> list[float]:
        return [b - a for a, b in zip(self.cpu_ends, self.cpu_ends[1:], strict=False)]


def _input_image(resolution: int, device: Any, dtype: Any) -> Any:
    """A smooth deterministic chest-like test pattern in [-1, 1], 3 equal channels."""
    import torch

    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    lungs += np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    gray = 0.8 - 0.6 * lungs + 0.05 * np.sin(40 * yy)
    tensor = torch.from_numpy(np.clip(gray, 0, 1) * 2 - 1)[None, None].repeat(1, 3, 1, 1)
    return tensor.to(device=device, dtype=dtype)


def run_bench(
    arch: Literal["tiny", "sd15"] = "tiny",
    *,
    steps: int = 10,
    device: str = "auto",
    dtype: str = "auto",
    resolution: int = 512,
    repeats: int = 3,
    composite_native: tuple[int, int] = (2500, 2048),
) -> dict[str, Any]:
    import diffusers
    import torch

    if steps < 2:
        raise ValueError("steps must be >= 2 (seconds per step are measured between step ends)")
    torch_device = resolve_device(device)
    cuda = torch_device.type == "cuda"
    t0 = time.perf_counter()
    if arch == "tiny":
        from editor.tiny import init_tiny_model

        tmp = tempfile.mkdtemp(prefix="x2x-bench-tiny-")
        model = load_model(init_tiny_model(Path(tmp) / "tiny", seed=0), device=device, dtype=dtype)
    elif arch == "sd15":
        model = build_sd15_random(device=device, dtype=dtype)
    else:
        raise ValueError(f"unknown arch {arch!r}; use tiny or sd15")
    build_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(torch_device)

    image = _input_image(resolution, model.device, model.dtype)
    pipe = pipeline_from_model(model)
    seed = 0
    sf = model.scaling_factor

    def fresh_scheduler() -> Any:
        return type(model.scheduler).from_config(model.scheduler.config)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        sync()
        t = time.perf_counter()
        posterior = model.vae.encode(image).latent_dist
        image_latents = posterior.mode()
        sync()
        encode_s = time.perf_counter() - t
        source_latents = image_latents * sf
        emb = encode_text(model.tokenizer, model.text_encoder, [BENCH_PROMPT, ""], model.device)
        prompt_embeds = torch.cat([emb[:1], emb[1:], emb[1:]])
        h, w = image_latents.shape[-2:]
        mask = torch.zeros((1, 1, h, w), device=model.device, dtype=model.dtype)
        mask[..., h // 2 :, : w // 2] = 1  # a lower-left quadrant: RSE blending every step

        def ours(n_steps: int, latent_mask: Any) -> _StepTimer:
            timer = _StepTimer(cuda)
            rse_denoise(
                model.unet, fresh_scheduler(), prompt_embeds=prompt_embeds, image_latents=image_latents,
                source_latents=source_latents, latent_mask=latent_mask, steps=n_steps, text_guidance=7.5,
                image_guidance=1.5, start="noise", blend_timestep="current",
                generator=make_generator(model.device, seed), step_callback=timer,
            )
            return timer

        def reference(n_steps: int) -> _StepTimer:
            timer = _StepTimer(cuda)

            def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                timer()
                return kwargs

            pipe(
                BENCH_PROMPT, image=(image.float() / 2 + 0.5).clamp(0, 1), num_inference_steps=n_steps,
                guidance_scale=7.5, image_guidance_scale=1.5, generator=make_generator(model.device, seed),
                output_type="latent", callback_on_step_end=on_step_end,
            )
            return timer

        ours(2, mask)  # warm-up (kernels, allocator) for both
        reference(2)
        # Interleaved runs; the median of all individual step times is robust to a busy machine.
        ours_rse: list[float] = []
        ours_plain: list[float] = []
        theirs: list[float] = []
        ours_cpu: list[float] = []
        theirs_cpu: list[float] = []
        for _ in range(max(1, repeats)):
            timer = ours(steps, mask)
            ours_rse += timer.durations()
            ours_cpu += timer.cpu_durations()
            timer = reference(steps)
            theirs += timer.durations()
            theirs_cpu += timer.cpu_durations()
            ours_plain += ours(steps, None).durations()

        sync()
        t = time.perf_counter()
        relevance_map(model.unet, fresh_scheduler(), source_latents=source_latents, image_latents=image_latents,
                      text_embeddings=emb, timestep=800, samples=1,
                      generator=make_generator(model.device, seed))
        sync()
        relevance_s = time.perf_counter() - t
        t = time.perf_counter()
        model.vae.decode(source_latents / sf, return_dict=False)
        sync()
        decode_s = time.perf_counter() - t

    composite_s = _composite_seconds(composite_native, resolution)
    ours_s = statistics.median(ours_rse)
    theirs_s = statistics.median(theirs)
    plain_s = statistics.median(ours_plain)
    if cuda:
        peak = {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(torch_device) / 2**20, 1)}
    else:
        peak = {}
    peak["peak_host_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return {
        "arch": arch,
        "device": str(model.device),
        "gpu": torch.cuda.get_device_name(torch_device) if cuda else None,
        "dtype": str(model.dtype).replace("torch.", ""),
        "resolution": resolution,
        "latent_shape": [int(h), int(w)],
        "steps": steps,
        "repeats": repeats,
        "unet_parameters_m": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 1),
        "ours_rse_s_per_step": round(ours_s, 5),
        "ours_plain_s_per_step": round(plain_s, 5),
        "diffusers_s_per_step": round(theirs_s, 5),
        "ratio": round(ours_s / theirs_s, 4),
        "ratio_plain": round(plain_s / theirs_s, 4),
        "goal_ratio": 1.05,
        "meets_goal": ours_s / theirs_s <= 1.05,
        "timed_steps_per_loop": len(theirs),
        # Fastest single step: the least disturbed estimate on a shared machine.
        "ours_rse_s_per_step_min": round(min(ours_rse), 5),
        "diffusers_s_per_step_min": round(min(theirs), 5),
        "ratio_min": round(min(ours_rse) / min(theirs), 4),
        "ours_rse_s_per_step_mean": round(statistics.fmean(ours_rse), 5),
        "diffusers_s_per_step_mean": round(statistics.fmean(theirs), 5),
        # CPU seconds of this process per step (meaningful on CPU, where other jobs share the cores).
        "ours_rse_cpu_s_per_step": round(statistics.median(ours_cpu), 5),
        "diffusers_cpu_s_per_step": round(statistics.median(theirs_cpu), 5),
        "ratio_cpu_time": round(statistics.median(ours_cpu) / statistics.median(theirs_cpu), 4),
        "encode_s": round(encode_s, 4),
        "relevance_map_s": round(relevance_s, 4),
        "decode_s": round(decode_s, 4),
        "composite_s": round(composite_s, 4),
        "composite_native_shape": list(composite_native),
        "estimated_s_per_100_step_edit": round(encode_s + relevance_s + 100 * ours_s + decode_s + composite_s, 2),
        "build_s": round(build_s, 2),
        **peak,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def _composite_seconds(native_shape: tuple[int, int], resolution: int) -> float:
    """The native-resolution composite (resample, to stored values, feather, blend) on a 12-bit image."""
    from editor.composite import blend_stored, feather_alpha, native_mask
    from editor.preprocess import preprocess
    from editor.types import SourceImage

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=native_shape, dtype=np.uint16)
    src = SourceImage(pixels=stored, bits_stored=12, window_center=2048, window_width=4096)
    pre = preprocess(src, resolution)
    model_shape = pre.grid.model_shape
    edited_model = rng.random(model_shape, dtype=np.float32)
    mask_model = np.zeros(model_shape, dtype=bool)
    mask_model[model_shape[0] // 2 :, : model_shape[1] // 2] = True
    t = time.perf_counter()
    mask = native_mask(mask_model, pre.grid.to_native)
    edited = pre.mapping.to_stored(np.clip(pre.grid.to_native(edited_model, order="linear"), 0, 1))
    blend_stored(stored, edited, feather_alpha(mask, 4))
    return time.perf_counter() - t
