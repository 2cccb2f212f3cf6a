"""Benchmark: edits per second, B images edited one at a time vs together (`Editor.edit_batch`), same model,
images, seeds and parameters, same run.

Each repeat times B single edits and one batch of the same B edits (interleaved, after a warm-up of
both); best and median edits/s are reported with their ratio. Whole edits are timed (preprocess, prior,
encode, relevance, denoise, decode, composite), as a worker runs them. `arch="sd15"` uses random
SD1.5-size weights built in memory (editor/bench.py), `demo` the shipped phantom demo model.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from editor.bench import BENCH_PROMPT, build_sd15_random
from editor.editor import Editor
from editor.model import load_model
from editor.types import EditItem, EditParams, SourceImage


def _source(k: int, side: int) -> SourceImage:
    """A 12-bit chest-like test image, different for each k."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    shift = 0.02 * (k % 5)
    lungs = np.exp(-(((xx - 0.3 - shift) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    lungs += np.exp(-(((xx - 0.7 + shift) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    gray = np.clip(0.8 - 0.6 * lungs + 0.05 * np.sin((40 + k) * yy), 0, 1)
    return SourceImage(pixels=np.rint(gray * 4095).astype(np.uint16), bits_stored=12, window_center=2048,
                       window_width=4096, patient_orientation=("L", "F"), view_position="PA")


def _editor(arch: str, device: str, dtype: str) -> Editor:
    if arch == "sd15":
        return Editor(build_sd15_random(device=device, dtype=dtype))
    if arch == "demo":
        from editor.demo import demo_model_path

        path = demo_model_path()
        if path is None:
            raise ValueError("this install ships no demo model")
        return Editor(load_model(path, device=device, dtype=dtype))
    if arch == "tiny":
        from editor.tiny import init_tiny_model

        folder = Path(tempfile.mkdtemp(prefix="x2x-bench-tiny-")) / "tiny"
        return Editor(load_model(init_tiny_model(folder, seed=0), device=device, dtype=dtype))
    raise ValueError(f"unknown arch {arch!r}; use tiny, demo or sd15")


def run_batch_bench(
    arch: Literal["tiny", "demo", "sd15"] = "tiny",
    *,
    batch: int = 4,
    steps: int = 10,
    device: str = "auto",
    dtype: str = "auto",
    resolution: int | None = None,
    repeats: int = 3,
    vae_batch: bool = False,
) -> dict[str, Any]:
    import torch

    if batch < 1:
        raise ValueError("batch must be >= 1")
    t0 = time.perf_counter()
    editor = _editor(arch, device, dtype)
    build_s = time.perf_counter() - t0
    model = editor.model
    cuda = model.device.type == "cuda"
    side = resolution or model.resolution
    params = EditParams(steps=steps, resolution=side)
    items = [EditItem(_source(k, side), BENCH_PROMPT, seed=k, params=params) for k in range(batch)]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def singles() -> float:
        sync()
        t = time.perf_counter()
        for it in items:
            editor.edit(it.image, it.instruction, seed=it.seed, params=it.params)
        sync()
        return time.perf_counter() - t

    def together() -> float:
        sync()
        t = time.perf_counter()
        editor.edit_batch(items, vae_batch=vae_batch)
        sync()
        return time.perf_counter() - t

    editor.edit(items[0].image, items[0].instruction, seed=0, params=params)  # warm-up: kernels, allocator
    editor.edit_batch(items, vae_batch=vae_batch)
    if cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    single_s, batch_s = [], []
    for _ in range(max(1, repeats)):
        single_s.append(singles())
        batch_s.append(together())
    single_rate = [batch / s for s in single_s]
    batch_rate = [batch / s for s in batch_s]
    out: dict[str, Any] = {
        "arch": arch,
        "device": str(model.device),
        "gpu": torch.cuda.get_device_name(model.device) if cuda else None,
        "dtype": str(model.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "resolution": side,
        "steps": steps,
        "batch": batch,
        "vae_batch": vae_batch,
        "repeats": repeats,
        "single_edits_per_s_best": round(max(single_rate), 3),
        "single_edits_per_s_median": round(statistics.median(single_rate), 3),
        "batch_edits_per_s_best": round(max(batch_rate), 3),
        "batch_edits_per_s_median": round(statistics.median(batch_rate), 3),
        "ratio_batch_over_single_median": round(statistics.median(batch_rate) / statistics.median(single_rate), 3),
        "ratio_batch_over_single_best": round(max(batch_rate) / max(single_rate), 3),
        "seconds_per_single_edit_median": round(statistics.median(single_s) / batch, 4),
        "seconds_per_batch_median": round(statistics.median(batch_s), 4),
        "build_s": round(build_s, 2),
    }
    if cuda:
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(model.device) / 2**20, 1)
    return out
