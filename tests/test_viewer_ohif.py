"""The guidance map as a radiologist sees it: the real chest CR goes through the node (dcmtk storescu in,
C-STORE out) to a real Orthanc, and the OHIF Viewer (the prebuilt @ohif/app, pinned, fetched by the test
set-up into a cache) shows the BINARY SEG on the source and the counterfactual SC, in headless Chromium
with software WebGL.

OHIF 3.13.2 renders the pydicom-data CR itself black: the CR's Pixel Spacing is 0\\0 (invalid) and
cornerstone3D sizes the image by it. That is the source's fault and the node never rewrites a source in
the PACS, so the pictures are checked on a copy of the real CR without that invalid attribute; the CR as
it is still has to open its SEG without an error (the crash this test was written for: "Cannot
destructure property 'SpacingBetweenSlices' of 'PixelMeasures' as it is undefined").

Set X2X_OHIF_SCREENSHOTS=DIR to keep the screenshots (docs/img/ohif-seg-left-effusion.png is one).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from tests.support.dicom_files import renumbered_copy, storescu
from tests.support.node import run_node
from tests.support.ohif import OHIF_VERSION, OhifPage, OhifServer, launch_chromium, ohif_dist
from tests.support.orthanc import Orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTRUCTION = "Add the finding of left pleural effusion."
NODE_CONFIG = """
[edit]
steps = 2
resolution = 256

[[rules]]
called_ae = "X2X_EFFUSION"
instruction = "{instruction}"
destination = "pacs"

[destinations.pacs]
type = "cstore"
host = "127.0.0.1"
port = {port}
ae_title = "{aet}"
"""
# A pixel is overlay-coloured when red stands out of the grey image by this much (OHIF's first segment
# colour is red; the CR under it is grey, R = G = B).
REDNESS = 40


def _redness(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2])


def _image_coordinates(placement: dict[str, Any], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every screenshot pixel: (row, column) of the image pixel under it and whether it is on the image."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    cx, cy = xs + 0.5 - placement["left"], ys + 0.5 - placement["top"]
    first, last = placement["first"], placement["last"]
    cols, rows = placement["cols"], placement["rows"]
    col = (cx - first[0]) / (last[0] - first[0]) * (cols - 1)
    row = (cy - first[1]) / (last[1] - first[1]) * (rows - 1)
    in_canvas = (cx >= 0) & (cy >= 0) & (cx < placement["width"]) & (cy < placement["height"])
    on_image = in_canvas & (col >= 0) & (row >= 0) & (col <= cols - 1) & (row <= rows - 1)
    return np.rint(row).astype(int).clip(0, rows - 1), np.rint(col).astype(int).clip(0, cols - 1), on_image


def _screenshot(page: OhifPage, tmp_path: Path, name: str,
                until: Callable[[np.ndarray], bool] | None = None, timeout_s: float = 30.0) -> np.ndarray:
    """A screenshot (kept under X2X_OHIF_SCREENSHOTS if set); with `until`, retaken every second until
    `until(pixels)` holds or `timeout_s` passes (software WebGL on a busy machine draws late)."""
    path = tmp_path / f"{name}.png"
    deadline = time.monotonic() + timeout_s
    while True:
        page.screenshot(path)
        if until is None or until(np.asarray(Image.open(path).convert("RGB"))) or time.monotonic() > deadline:
            break
        page.settle(1000)
    keep = os.environ.get("X2X_OHIF_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return np.asarray(Image.open(path).convert("RGB"))


def _study_objects(orthanc: Orthanc, study_uid: str) -> dict[str, pydicom.Dataset]:
    """The node's objects in Orthanc, keyed by the start of their Series Description."""
    out = {}
    for series in orthanc.study_series(study_uid):
        description = series["MainDicomTags"].get("SeriesDescription", "")
        (instance,) = series["Instances"]
        if description.startswith("X2X "):
            out[description.split(":")[0]] = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance)))
    return out


def _displayed_grey(sc: pydicom.Dataset) -> np.ndarray:
    """The SC as a viewer shows it: linear window (Window Center / Width), MONOCHROME1 inverted, 0..1."""
    center, width = float(sc.WindowCenter), float(sc.WindowWidth)
    grey = np.clip((sc.pixel_array.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return 1.0 - grey if sc.PhotometricInterpretation == "MONOCHROME1" else grey


def test_ohif_shows_the_binary_seg_on_the_chest_cr_and_opens_the_counterfactual(
    tmp_path: Path, chest_cr_path: Path, tiny_model_dir: Path
) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright (the dev extra) is not installed: pip install -e '.[dev]'")

    dist = ohif_dist()  # test set-up: fetched once into the cache (fails clearly without npm)
    as_is = chest_cr_path
    repaired = renumbered_copy(chest_cr_path, tmp_path / "cr-without-invalid-spacing.dcm")
    ds = pydicom.dcmread(repaired)
    del ds.PixelSpacing
    ds.save_as(repaired, enforce_file_format=True)
    studies = {name: str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
               for name, p in (("as_is", as_is), ("repaired", repaired))}

    with Orthanc(tmp_path / "orthanc") as orthanc:
        config = NODE_CONFIG.format(instruction=INSTRUCTION, port=orthanc.dicom_port, aet=orthanc.ae_title)
        with run_node(tmp_path, config, model_dir=tiny_model_dir) as node:
            for path in (as_is, repaired):  # the sources reach the PACS as they would from the modality
                assert storescu(orthanc.dicom_port, path, called_ae=orthanc.ae_title).returncode == 0
                sent = storescu(node.port, path, called_ae="X2X_EFFUSION")
                assert sent.returncode == 0, sent.stderr
            node.wait_for(lambda: (jobs := node.jobs()) and len(jobs) == 2 and all(j["state"] == "done" for j in jobs),
                          timeout=400, what="both edits delivered")
        assert orthanc.instance_count() == 2 + 2 * 5

        objects = _study_objects(orthanc, studies["repaired"])
        seg = hd.seg.Segmentation.from_dataset(objects["X2X mask"])
        source_uid = str(ds.SOPInstanceUID)
        mask = seg.get_pixels_by_source_instance([source_uid], combine_segments=True)[0].astype(bool)
        rows, cols = mask.shape
        assert mask.any()
        # laterality from the DICOM orientation: on the L\F CR the patient's left is the image's right
        mask_rows, mask_cols = np.nonzero(mask)
        assert mask_cols.mean() > cols / 2 and mask_rows.mean() > rows / 2, "not in the image-right lower zone"

        with OhifServer(dist, orthanc.url) as ohif, sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                # 1. the CR as it is (Pixel Spacing 0\0): the SEG opens without an error
                page = OhifPage(browser, ohif)
                page.open_study(studies["as_is"])
                loaded = page.open_segmentation("X2X mask")
                assert any("pleural effusion" in s["segments"] for s in loaded), loaded
                _screenshot(page, tmp_path, "ohif-cr-as-is-seg")

                # 2. the CR without its invalid spacing: the mask is drawn where it is, and nowhere else
                page = OhifPage(browser, ohif)
                placement = page.open_study(studies["repaired"])
                assert (placement["rows"], placement["cols"]) == (rows, cols)
                before = _screenshot(page, tmp_path, "ohif-source")
                row, col, on_image = _image_coordinates(placement, before.shape[:2])
                assert on_image.sum() > 200_000, placement  # the image fills the viewport
                assert (_redness(before)[on_image] > REDNESS).mean() < 0.001  # a grey image, nothing red yet
                grey = before[..., 0][on_image].astype(float)
                assert grey.std() > 20, "the source image is not rendered"

                screen_px = (placement["last"][0] - placement["first"][0]) / (cols - 1)  # screen px per image px
                tolerance = int(np.ceil(2.0 / screen_px))  # two screen pixels, in image pixels
                near_mask = ndimage.binary_dilation(mask, iterations=tolerance)
                inside = ndimage.binary_erosion(mask, iterations=tolerance)
                interior = on_image & inside[row, col]  # screen pixels surely on the mask

                page.open_segmentation("X2X mask")
                after = _screenshot(page, tmp_path, "ohif-seg-left-effusion",
                                    until=lambda shot: bool((_redness(shot)[interior] > REDNESS).mean() > 0.9))
                red = (_redness(after) > REDNESS) & on_image
                assert red.sum() > 2000, "no overlay colour on the image"
                on_mask = near_mask[row[red], col[red]]
                assert on_mask.mean() > 0.98, f"{(~on_mask).sum()} overlay-coloured pixels off the mask"
                assert red[interior].mean() > 0.9, f"only {red[interior].mean():.2%} of the mask is coloured"

                # 3. the counterfactual SC: OHIF shows its pixels (inside the mask they are not the source's)
                sc = objects["X2X counterfactual"]
                placement = page.open_series("X2X counterfactual")
                row, col, on_image = _image_coordinates(placement, before.shape[:2])
                in_mask = on_image & inside[row, col]
                # drawn once the masked region no longer shows the source (nor the SEG's colour)
                shown = _screenshot(page, tmp_path, "ohif-counterfactual", until=lambda shot: bool(
                    np.abs(shot[in_mask].astype(int) - before[in_mask].astype(int)).mean() > 10
                    and (_redness(shot)[in_mask] > REDNESS).mean() < 0.01))
                screen_grey = shown[..., 0].astype(float)
                # what the screen shows of each image pixel: the SC's displayed grey, averaged over the
                # image pixels one screen pixel covers (the viewer downsamples)
                footprint = max(1, round(1 / screen_px))
                expected = ndimage.uniform_filter(_displayed_grey(sc), footprint)
                source_grey = ndimage.uniform_filter(_displayed_grey(ds), footprint)
                # OHIF writes its overlays (series description, cine player, window level) over the top and
                # bottom of the viewport: compare below and above them
                band = (np.arange(shown.shape[0])[:, None] > placement["top"] + 140) & (
                    np.arange(shown.shape[0])[:, None] < placement["top"] + placement["height"] - 70)
                compared = on_image & band
                correlation = np.corrcoef(screen_grey[compared], expected[row[compared], col[compared]])[0, 1]
                assert correlation > 0.95, correlation
                edited = np.corrcoef(screen_grey[in_mask], expected[row[in_mask], col[in_mask]])[0, 1]
                original = np.corrcoef(screen_grey[in_mask], source_grey[row[in_mask], col[in_mask]])[0, 1]
                assert edited > 0.9 and edited > original + 0.3, (edited, original, OHIF_VERSION)
                page.assert_no_failure("the counterfactual SC")
            finally:
                browser.close()
