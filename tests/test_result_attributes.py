"""Attributes every output must get right whatever the source: the plane geometry's spacing rules, the time
of the edit, and the source's lossy-compression history (a real JPEG Baseline CR made with dcmtk)."""

from __future__ import annotations

import copy
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.results import KINDS, encode_results, save_objects
from dicom_node.results.geometry import plane_geometry, valid_spacing
from editor.instructions import parse_instruction
from editor.types import EditParams, EditResult
from tests.conftest import require_tool
from tests.support.chest_copies import chest_copy
from tests.test_results import dciodvfy_report

EDIT_TIME = datetime(2026, 3, 1, 2, 30, 15, tzinfo=timezone.utc)


def small_result(source: Dataset) -> EditResult:
    """An encoder input on the source's grid: a left-lower-zone mask (image right, lower half)."""
    rows, cols = int(source.Rows), int(source.Columns)
    mask = np.zeros((rows, cols), dtype=bool)
    mask[rows // 2: rows * 4 // 5, cols // 2: cols * 5 // 6] = True
    guidance = np.where(mask, 0.8, 0.05).astype(np.float32)
    counterfactual = source.pixel_array.copy()
    counterfactual[mask] = counterfactual[mask] // 2
    return EditResult(
        counterfactual=counterfactual, relevance=guidance, guidance=guidance, mask=mask,
        finding_masks={"pleural effusion": mask}, coverage=float(mask.mean()),
        instruction=parse_instruction("Add the finding of left pleural effusion."), prior_source="anatomy",
        seed=0, params=EditParams(steps=2), model_id="tiny", model_hash="e" * 64,
    )


@pytest.fixture(scope="module")
def small_cr(chest_cr_path: Path) -> Dataset:
    """The real chest CR, every 8th pixel (245 x 231): Pixel Spacing 0\\0, L\\F, MONOCHROME1, 15 bits."""
    return chest_copy(chest_cr_path, factor=8)


def _derived_geometry(datasets: dict[str, Dataset]) -> set[tuple[object, ...]]:
    out = set()
    for kind in ("seg", "fseg", "pmap"):
        ds = datasets[kind]
        shared = ds.SharedFunctionalGroupsSequence[0]
        out.add((
            str(ds.FrameOfReferenceUID),
            tuple(float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing),
            tuple(float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient),
            tuple(float(v) for v in ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
                  .ImagePositionPatient),
        ))
    return out


@pytest.mark.parametrize(
    ("changes", "spacing", "how"),
    [
        ({"PixelSpacing": [0.2, 0.25]}, (0.2, 0.25), "spacing from Pixel Spacing"),
        ({"ImagerPixelSpacing": [0.2, 0.2], "EstimatedRadiographicMagnificationFactor": 1.25}, (0.16, 0.16),
         "Estimated Radiographic Magnification Factor 1.25"),
        ({"ImagerPixelSpacing": [0.2, 0.2]}, (0.2, 0.2), "not magnification-corrected"),
        ({"ImagerPixelSpacing": [0.0, 0.0], "EstimatedRadiographicMagnificationFactor": 1.1}, (1.0, 1.0),
         "NOMINAL 1 mm"),
        ({"ImagerPixelSpacing": [0.2, 0.2], "EstimatedRadiographicMagnificationFactor": 0}, (0.2, 0.2),
         "not magnification-corrected"),
    ],
    ids=["pixel-spacing", "imager-with-magnification", "imager-only", "invalid-imager", "invalid-magnification"],
)
def test_spacing_rules_and_one_frame_per_job(
    small_cr: Dataset, changes: dict[str, object], spacing: tuple[float, float], how: str
) -> None:
    """Valid Pixel Spacing (here the invalid 0\\0 replaced) > Imager Pixel Spacing / ERMF > Imager Pixel
    Spacing > nominal 1 mm; an invalid value is never copied; SEG, FSEG and PM share one geometry."""
    source = copy.deepcopy(small_cr)
    if "PixelSpacing" not in changes:
        del source.PixelSpacing  # the copy's 0\\0 would be ignored anyway; here the other rules are tested
    for keyword, value in changes.items():
        setattr(source, keyword, value)
    geometry = plane_geometry(source, "2.25.1")
    assert geometry.spacing == pytest.approx(spacing)
    assert how in geometry.note
    datasets = encode_results(source, small_result(source), job_key="spacing", edit_time=EDIT_TIME)
    (frame, encoded_spacing, orientation, position), = _derived_geometry(datasets)  # one geometry for all three
    assert encoded_spacing == pytest.approx(spacing) and orientation == (1, 0, 0, 0, 1, 0)
    assert how in datasets["seg"].DerivationDescription
    for kind in ("counterfactual", "seg", "fseg", "overlay"):
        ds = datasets[kind]
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            if keyword in ds:
                assert all(float(v) > 0 for v in ds[keyword].value), (kind, keyword)


@pytest.mark.parametrize("value", [[0, 0], [-0.2, 0.2], [float("nan"), 0.2], [float("inf"), 0.2], [0.2], "0.2", None])
def test_an_invalid_spacing_is_never_used(value: object) -> None:
    """Whatever a sender writes as a spacing, only two finite positive numbers count."""
    assert valid_spacing(value) is None


@pytest.mark.parametrize("magnification", [0, -1.2, float("nan"), float("inf"), None])
def test_an_invalid_magnification_factor_is_ignored(magnification: object) -> None:
    source = Dataset()
    source.ImagerPixelSpacing = [0.3, 0.3]
    source.EstimatedRadiographicMagnificationFactor = magnification
    geometry = plane_geometry(source, "2.25.3")
    assert geometry.spacing == (0.3, 0.3) and "not magnification-corrected" in geometry.note


def test_source_with_orientation_but_no_frame_keeps_its_plane(small_cr: Dataset) -> None:
    """A DX with Image Orientation (Patient) but no Frame of Reference: the new frame lies on the source's
    plane (viewers put the source there), not on the image plane."""
    source = copy.deepcopy(small_cr)
    del source.PixelSpacing
    source.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    geometry = plane_geometry(source, "2.25.2")
    assert [float(v) for v in geometry.plane_orientation[0].ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert "Image Orientation (Patient)" in geometry.note and not geometry.shares_source_frame


def test_every_object_carries_the_time_of_the_edit_in_the_source_time_zone(small_cr: Dataset) -> None:
    """Series / Content / Instance Creation Date and Time = the edit's, written in the source's Timezone
    Offset From UTC (-0400 on the chest CR, copied onto every object), never left out (Orthanc Explorer
    files series without a date under "?")."""
    assert small_cr.TimezoneOffsetFromUTC == "-0400"
    datasets = encode_results(small_cr, small_result(small_cr), job_key="times", edit_time=EDIT_TIME)
    for kind, ds in datasets.items():
        assert ds.TimezoneOffsetFromUTC == "-0400", kind
        for prefix in ("Series", "Content", "InstanceCreation"):
            assert (ds[f"{prefix}Date"].value, ds[f"{prefix}Time"].value) == ("20260228", "223015"), (kind, prefix)
        ours = [item for item in ds.ContributingEquipmentSequence
                if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"]
        assert ours[0].ContributionDateTime == "20260228223015", kind
    # the source's study stays the source's
    assert {str(ds.StudyDate) for ds in datasets.values()} == {str(small_cr.StudyDate)}


@pytest.mark.parametrize("offset", [None, "+2500", "EST"], ids=["absent", "out-of-range", "not-an-offset"])
def test_without_a_valid_source_time_zone_the_node_writes_local_time(small_cr: Dataset, offset: str | None) -> None:
    source = copy.deepcopy(small_cr)
    if offset is None:
        del source.TimezoneOffsetFromUTC
    else:
        source.TimezoneOffsetFromUTC = offset
    datasets = encode_results(source, small_result(source), job_key="local", edit_time=EDIT_TIME)
    local = EDIT_TIME.astimezone()
    for ds in datasets.values():
        assert "TimezoneOffsetFromUTC" not in ds
        assert (ds.SeriesDate, ds.SeriesTime) == (local.strftime("%Y%m%d"), local.strftime("%H%M%S"))


def _jpeg_baseline_cr(chest_cr_path: Path, tmp_path: Path) -> Path:
    """The real chest CR as many archives hold it: 8 bits, JPEG Baseline (process 1), encoded by dcmtk's
    dcmcjpeg, which records Lossy Image Compression 01, its ratio and method ISO_10918_1."""
    ds = chest_copy(chest_cr_path, factor=4)
    eight = np.clip(np.rint(ds.pixel_array.astype(np.float64) / 32767 * 255), 0, 255).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = eight.tobytes()
    ds.WindowCenter, ds.WindowWidth = 117, 234
    del ds.PixelSpacing  # dcmcjpeg warns about the 0\\0 value; the geometry is not what is tested here
    plain = tmp_path / "cr8.dcm"
    ds.save_as(plain, enforce_file_format=True)
    jpeg = tmp_path / "cr8-jpeg-baseline.dcm"
    done = subprocess.run([require_tool("dcmcjpeg"), "+eb", str(plain), str(jpeg)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return jpeg


@pytest.mark.integration
def test_lossy_jpeg_baseline_source_is_said_lossy_on_all_five(chest_cr_path: Path, tmp_path: Path) -> None:
    """Once lossy, always lossy: every object derived from a JPEG Baseline source says Lossy Image
    Compression 01 with the source's ratio and method (the SCs said 00 before), and passes dciodvfy."""
    path = _jpeg_baseline_cr(chest_cr_path, tmp_path)
    source = pydicom.dcmread(path)
    assert source.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert source.LossyImageCompression == "01" and source.LossyImageCompressionMethod == "ISO_10918_1"
    paths = save_objects(encode_results(source, small_result(source), job_key="jpeg", edit_time=EDIT_TIME),
                         tmp_path / "out")
    for kind in KINDS:
        ds = pydicom.dcmread(paths[kind])
        assert ds.LossyImageCompression == "01", kind
        assert str(ds.LossyImageCompressionRatio) == str(source.LossyImageCompressionRatio), kind
        assert ds.LossyImageCompressionMethod == "ISO_10918_1", kind
        errors, _warnings, text = dciodvfy_report(paths[kind])
        assert errors == [], f"{kind}:\n{text}"


def test_lossy_syntax_without_the_attribute_is_still_said_lossy(chest_cr_path: Path, tmp_path: Path) -> None:
    """A JPEG Baseline file whose sender left Lossy Image Compression out: the transfer syntax is proof
    enough; the ratio comes from the encapsulated size, the method from the syntax."""
    source = pydicom.dcmread(_jpeg_baseline_cr(chest_cr_path, tmp_path))
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        del source[keyword]
    datasets = encode_results(source, small_result(source), job_key="jpeg-bare", edit_time=EDIT_TIME)
    expected_ratio = source.Rows * source.Columns / len(source.PixelData)
    for kind, ds in datasets.items():
        assert ds.LossyImageCompression == "01", kind
        assert ds.LossyImageCompressionMethod == "ISO_10918_1", kind
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(expected_ratio, rel=0.01), kind


def test_uncompressed_source_is_not_lossy(small_cr: Dataset) -> None:
    datasets = encode_results(small_cr, small_result(small_cr), job_key="plain", edit_time=EDIT_TIME)
    for kind, ds in datasets.items():
        assert ds.LossyImageCompression == "00", kind
        assert "LossyImageCompressionRatio" not in ds and "LossyImageCompressionMethod" not in ds, kind
