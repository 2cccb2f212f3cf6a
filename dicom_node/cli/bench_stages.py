"""`x2x bench stages`: the CPU stages after the model, per stage, on the 1955 x 1841 chest CR, on one core.

The diffusion part is replaced by a fixed, realistic model-grid result (a smooth relevance map times the
image's own anatomy prior, masks as the editor makes them, a perturbed decode), so the stages after it
run the node's real code: the editor's native composite (step 7), each of the five DICOM objects, their
durable write, the previews, and `write_outputs` as the pipeline calls it. The reference in the same run
is the straightforward full-image composite (exact distance transform of the whole mask, every pixel
mapped and blended; its output must be identical) and writing the source CR itself once (I/O floor).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import typer

from dicom_node.cli.apps import bench_app

INSTRUCTION = "Add the finding of left pleural effusion."
TARGETS_S = {"composite": 0.15, "five_objects": 0.3}


def _times(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    seconds, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        seconds.append(time.perf_counter() - t0)
    return {"best_s": round(min(seconds), 4), "median_s": round(statistics.median(seconds), 4)}, value


def _reference_composite(p: Any, grid_edit: Any) -> np.ndarray:
    """The counterfactual computed on every pixel (the implementation before the edge-band composite)."""
    from scipy import ndimage

    from editor.composite import native_mask

    grid, image = p.pre.grid, p.image
    mask = native_mask(grid_edit.mask, grid.to_native)
    gray = grid_edit.image.mean(axis=0)
    edited = p.pre.mapping.to_stored(np.clip(grid.to_native(gray, order="linear"), 0, 1))
    depth = ndimage.distance_transform_edt(mask)
    alpha = np.clip(depth / (p.params.feather_px + 1.0), 0.0, 1.0).astype(np.float32)
    alpha[~mask] = 0.0
    src = image.pixels.astype(np.float64)
    mixed = src + alpha.astype(np.float64) * (edited.astype(np.float64) - src)
    info = np.iinfo(image.pixels.dtype)
    out = np.clip(np.rint(mixed), info.min, info.max).astype(image.pixels.dtype)
    out[alpha <= 0] = image.pixels[alpha <= 0]
    return out


def _fake_grid_edit(editor: Any, prepared: Any) -> Any:
    """A model-grid result without running the model: smooth relevance x the anatomy prior."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from editor.model_grid import ModelGridEdit, _masks

    grid_input = prepared.grid_input
    h, w = int(grid_input.image.shape[-2]) // 8, int(grid_input.image.shape[-1]) // 8
    rng = np.random.default_rng(0)
    r_lat = ndimage.gaussian_filter(rng.random((h, w)), 3.0)
    r_lat = ((r_lat - r_lat.min()) / (r_lat.max() - r_lat.min())).astype(np.float32)
    size = tuple(grid_input.image.shape[-2:])
    r_up = F.interpolate(torch.from_numpy(r_lat)[None, None], size=size, mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1).numpy()
    g_px, m_lat, m_px, notes, _stats = _masks(grid_input.prior, r_lat, r_up, prepared.params)
    model_image = prepared.pre.model_image
    decoded = np.clip(model_image + 0.08 * np.sin(np.arange(model_image.shape[1]) / 9.0), 0, 1)
    return ModelGridEdit(relevance_latent=r_lat, relevance=r_up, guidance=g_px, mask_latent=m_lat, mask=m_px,
                         image=np.repeat(decoded[None].astype(np.float32), 3, axis=0), notes=notes)


def run_bench(repeats: int, cpu: int | None) -> dict[str, Any]:
    from pydicom import dcmread

    from dicom_node.cli.bench_support import chest_cr_path
    from dicom_node.jobs.editing import read_source
    from dicom_node.results import sc, seg
    from dicom_node.results.encode import encode_results
    from dicom_node.results.geometry import plane_geometry
    from dicom_node.results.outputs import save_objects, write_outputs
    from dicom_node.results.overlay import overlay_rgb, overlay_sc
    from dicom_node.results.pmap import parametric_map
    from editor import EditItem, EditParams, load_edit_result, save_edit_result, source_from_dataset
    from editor.editor import Editor, composite_native
    from editor.model import load_model
    from editor.tiny import init_tiny_model

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="x2x-bench-stages-"))
    editor = Editor(load_model(init_tiny_model(work / "tiny", seed=0), device="cpu"))
    source_ds = dcmread(chest_cr_path())
    source = source_from_dataset(source_ds)
    prepared = editor._prepare(EditItem(source, INSTRUCTION, seed=0, params=EditParams()))
    grid_edit = _fake_grid_edit(editor, prepared)
    result = editor._finish(prepared, grid_edit)
    display = result.source_display
    assert display is not None
    out: dict[str, Any] = {
        "image": f"pydicom-data RG1_UNCR.dcm {source.shape[0]}x{source.shape[1]}, {source.pixels.dtype}",
        "coverage": round(result.coverage, 4), "model_grid": list(prepared.pre.grid.model_shape),
        "cpu_affinity": sorted(os.sched_getaffinity(0)), "repeats": repeats,
        "load_average": list(os.getloadavg()), "targets_s": TARGETS_S,
    }
    stages: dict[str, Any] = {}
    stages["composite"], native = _times(lambda: composite_native(prepared, grid_edit), repeats)
    stages["reference_full_image_composite"], reference = _times(
        lambda: _reference_composite(prepared, grid_edit), repeats)
    out["composite_identical_to_reference"] = bool(np.array_equal(native.counterfactual, reference))

    kw: dict[str, Any] = {"series_uid": "2.25.1", "sop_uid": "2.25.2", "series_number": 1}
    rgb = overlay_rgb(display, result.guidance)
    stages["counterfactual_sc"], _ = _times(lambda: sc.counterfactual_sc(source_ds, result, **kw), repeats)
    geometry = plane_geometry(source_ds, "2.25.4")  # one per job, shared by the SEGs and the map
    stages["binary_seg"], _ = _times(
        lambda: seg.binary_seg(source_ds, result, geometry=geometry, dimension_uid="2.25.3", **kw), repeats)
    stages["fractional_seg"], _ = _times(
        lambda: seg.fractional_seg(source_ds, result, geometry=geometry, dimension_uid="2.25.3", **kw), repeats)
    stages["parametric_map"], _ = _times(
        lambda: parametric_map(source_ds, result, geometry=geometry, dimension_uid="2.25.3", **kw), repeats)
    stages["overlay_rgb"], _ = _times(lambda: overlay_rgb(display, result.guidance), repeats)
    stages["overlay_sc_given_rgb"], _ = _times(lambda: overlay_sc(source_ds, result, rgb=rgb, **kw), repeats)
    stages["encode_five_objects"], datasets = _times(
        lambda: encode_results(source_ds, result, job_key="bench", overlay=rgb), repeats)
    folder = iter(range(10**6))
    stages["write_five_objects"], _ = _times(
        lambda: save_objects(datasets, work / f"objects-{next(folder)}"), repeats)
    stages["write_outputs"], written = _times(
        lambda: write_outputs(result, work / f"outputs-{next(folder)}", source=source, source_ds=source_ds,
                              job_key="bench"), repeats)
    stages["write_outputs"]["last_run_parts_s"] = written.timings
    # The hand-over between the node's stages: the edit stage saves the arrays (its only cost after the
    # model), the delivery stage loads them and reads the source again before encoding.
    stages["edit_stage_save_arrays"], _ = _times(
        lambda: save_edit_result(result, work / f"hand-over-{next(folder)}.npz"), repeats)
    saved = save_edit_result(result, work / "hand-over.npz")
    out["hand_over_file_bytes"] = saved.stat().st_size
    stages["delivery_stage_load_arrays"], _ = _times(lambda: load_edit_result(saved), repeats)
    stages["delivery_stage_read_source"], _ = _times(lambda: read_source(str(chest_cr_path())), repeats)
    stages["reference_write_source_cr"], _ = _times(
        lambda: save_objects({"counterfactual": source_ds}, work / f"source-{next(folder)}"), repeats)
    out["stages"] = stages
    five = stages["encode_five_objects"]["median_s"] + stages["write_five_objects"]["median_s"]
    out["five_objects_median_s"] = round(five, 4)
    out["five_objects_best_s"] = round(stages["encode_five_objects"]["best_s"]
                                       + stages["write_five_objects"]["best_s"], 4)
    out["ratio_composite_over_reference"] = round(
        stages["composite"]["median_s"] / stages["reference_full_image_composite"]["median_s"], 3)
    out["meets_targets"] = {"composite": stages["composite"]["median_s"] <= TARGETS_S["composite"],
                            "five_objects": five <= TARGETS_S["five_objects"]}
    return out


@bench_app.command("stages")
def bench_stages(
    repeats: int = typer.Option(7, min=1, help="Runs per stage (best and median reported)."),
    cpu: int = typer.Option(-1, help="Pin to this CPU (one core, one thread); -1 = the first allowed CPU."),
) -> None:
    """Seconds per CPU stage after the model (composite, each DICOM object, writes) on the chest CR (JSON)."""
    from editor import disable_progress_bars

    disable_progress_bars()
    chosen = sorted(os.sched_getaffinity(0))[0] if cpu < 0 else cpu
    typer.echo(json.dumps(run_bench(repeats, chosen), indent=2))
