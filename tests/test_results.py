"""EditResult -> five DICOM objects for the real chest CR (pydicom-data RG1_UNCR.dcm: MONOCHROME1,
15 bits stored, 1955 x 1841, Pixel Spacing 0\\0, Patient Orientation L\\F)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.config import ResultsConfig, load_settings
from dicom_node.results import FILE_NAMES, KINDS, encode_results, output_uids, save_objects
from dicom_node.results.provenance import PROJECT_NAME, ST_MAX_CHARS
from editor.instructions import parse_instruction
from editor.types import EditParams, EditResult
from tests.conftest import require_tool

INSTRUCTION = "Add the findings of left pleural effusion and cardiomegaly."
IOD_NAMES = {"counterfactual": "SCImage", "seg": "Segmentation", "fseg": "Segmentation",
             "pmap": "ParametricMap", "overlay": "SCImage"}
# The Debian dicom3tools / dcmtk dictionaries predate Synthetic Data (ARCHITECTURE.md §5).
KNOWN_DICTIONARY_GAP = "(0x0008,0x001c)"


def dciodvfy_report(path: Path) -> tuple[list[str], list[str], str]:
    """(error lines other than the known gap, warning lines, full output); exit code is unreliable."""
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    lines = [line.strip() for line in text.splitlines()]
    errors = [line for line in lines if line.startswith("Error") and KNOWN_DICTIONARY_GAP not in line]
    warnings = [line for line in lines if line.startswith("Warning") and KNOWN_DICTIONARY_GAP not in line]
    return errors, warnings, text


def synthetic_result(source: pydicom.Dataset, instruction: str = INSTRUCTION, seed: int = 3) -> EditResult:
    """An encoder input built directly (the editor's output format) with known, checkable arrays."""
    rows, cols = source.Rows, source.Columns
    yy, xx = np.mgrid[0:rows, 0:cols]
    effusion = (yy > 1200) & (yy < 1650) & (xx > 1000) & (xx < 1600)
    heart = ((yy - 1050) ** 2 / 300**2 + (xx - 900) ** 2 / 350**2) < 1
    mask = effusion | heart
    guidance = np.clip(np.exp(-(((yy - 1200) / 500.0) ** 2 + ((xx - 1100) / 600.0) ** 2)), 0, 1).astype(np.float32)
    guidance[mask] = np.maximum(guidance[mask], 0.5)
    counterfactual = source.pixel_array.copy()
    counterfactual[mask] = (counterfactual[mask] // 2 + 1000).astype(counterfactual.dtype)
    return EditResult(
        counterfactual=counterfactual,
        relevance=guidance,
        guidance=guidance,
        mask=mask,
        finding_masks={"pleural effusion": effusion, "cardiomegaly": heart & ~effusion},
        coverage=float(mask.mean()),
        instruction=parse_instruction(instruction),
        prior_source="anatomy",
        seed=seed,
        params=EditParams(steps=2),
        model_id="tiny-random-fixture",
        model_hash="0123456789abcdef" * 4,
    )


@pytest.fixture(scope="module")
def source(chest_cr_path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(chest_cr_path)


@pytest.fixture(scope="module")
def result(source: pydicom.Dataset) -> EditResult:
    return synthetic_result(source)


@pytest.fixture(scope="module")
def written(source: pydicom.Dataset, result: EditResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    datasets = encode_results(source, result, job_key="job-key-1")
    return save_objects(datasets, tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def read(written: dict[str, Path]) -> dict[str, pydicom.Dataset]:
    return {kind: pydicom.dcmread(path) for kind, path in written.items()}


@pytest.mark.integration
@pytest.mark.parametrize("kind", KINDS)
def test_object_passes_dciodvfy(written: dict[str, Path], kind: str) -> None:
    errors, warnings, text = dciodvfy_report(written[kind])
    assert IOD_NAMES[kind] in text, f"dciodvfy did not recognise the IOD:\n{text}"
    assert errors == [], f"{kind}: dciodvfy errors:\n{text}"
    # The only warnings are inherited from the source's own data (its Referring Physician "ward")
    # and highdicom's QUANTITY term for Parametric Maps, newer than the 2022 dicom3tools tables.
    allowed = ("Referring Physician", "Standard Extended SOP Class", "<QUANTITY>")
    assert [w for w in warnings if not any(a in w for a in allowed)] == [], text


def test_files_are_explicit_vr_little_endian(written: dict[str, Path]) -> None:
    assert set(written) == set(KINDS)
    for kind, path in written.items():
        assert path.name == FILE_NAMES[kind]
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_every_object_is_labelled_synthetic_with_provenance(
    read: dict[str, pydicom.Dataset], source: pydicom.Dataset, result: EditResult
) -> None:
    series = {ds.SeriesInstanceUID for ds in read.values()}
    assert len(series) == 5 and source.SeriesInstanceUID not in series  # one new series per kind
    for kind, ds in read.items():
        assert ds.SyntheticData == "YES", kind
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
            assert ds[keyword].value == source[keyword].value, (kind, keyword)
        assert ds.SeriesDescription.startswith("X2X ") and len(ds.SeriesDescription) <= 64
        # highdicom adds the source's acquisition equipment (109101) and itself (109102) around ours
        synthesizing = [
            item for item in ds.ContributingEquipmentSequence
            if (item.PurposeOfReferenceCodeSequence[0].CodeValue,
                item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator) == ("109100", "DCM")
        ]
        assert len(synthesizing) == 1, kind
        equipment = synthesizing[0]
        assert equipment.Manufacturer == PROJECT_NAME
        assert equipment.ManufacturerModelName == result.model_id
        assert any(result.model_hash[:16] in v for v in equipment.SoftwareVersions)
        if kind == "pmap":  # no General Image module: the derivation sits in the functional groups
            derivation = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
            description = derivation.DerivationDescription
            referenced = derivation.SourceImageSequence[0].ReferencedSOPInstanceUID
        else:
            description = ds.DerivationDescription
            referenced = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert referenced == source.SOPInstanceUID, kind
        assert len(description) <= ST_MAX_CHARS
        assert description.startswith("SYNTHETIC") and INSTRUCTION in description and "seed=3" in description
        assert '"steps":2' in description


def test_counterfactual_sc_keeps_the_source_representation(
    read: dict[str, pydicom.Dataset], written: dict[str, Path], source: pydicom.Dataset, result: EditResult
) -> None:
    sc = read["counterfactual"]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.ConversionType == "SYN" and sc.BurnedInAnnotation == "NO"
    assert sc.PhotometricInterpretation == source.PhotometricInterpretation == "MONOCHROME1"
    assert (sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation) == (16, 15, 14, 0)
    assert (float(sc.WindowCenter), float(sc.WindowWidth)) == (15000.0, 30000.0)
    assert list(sc.PatientOrientation) == ["L", "F"]
    assert "PixelSpacing" not in sc and "ImagerPixelSpacing" not in sc
    # LO holds 64 characters: the description is shortened, the full instruction is in the comments
    assert sc.SeriesDescription == f"X2X counterfactual: {INSTRUCTION}"[:61] + "..."
    assert sc.ImageComments.startswith("SYNTHETIC IMAGE") and INSTRUCTION in sc.ImageComments
    stored = sc.pixel_array
    np.testing.assert_array_equal(stored, result.counterfactual)  # no value mapping at all
    outside = ~result.mask
    np.testing.assert_array_equal(stored[outside], source.pixel_array[outside])
    assert (stored[result.mask] != source.pixel_array[result.mask]).any()
    assert hd.imread(written["counterfactual"]).get_frame(1).shape == stored.shape


def test_binary_seg_is_the_mask_one_segment_per_finding(
    written: dict[str, Path], source: pydicom.Dataset, result: EditResult
) -> None:
    seg = hd.seg.segread(written["seg"])
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.SegmentationType == "BINARY"
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["pleural effusion", "cardiomegaly"]
    effusion = seg.SegmentSequence[0]
    assert effusion.SegmentedPropertyTypeCodeSequence[0].CodeValue == "60046008"
    assert effusion.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "InstructX2X" and algorithm.AlgorithmVersion
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert len(item.RecommendedDisplayCIELabValue) == 3  # else viewers pick a colour and warn
    red, green, blue = hd.color.CIELabColor.from_dicom_value(effusion.RecommendedDisplayCIELabValue).to_rgb()
    assert red > 200 and green < 80 and blue < 80  # the first segment is red, like the overlay SC
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)[0]
    for index, name in enumerate(labels):
        np.testing.assert_array_equal(pixels[..., index].astype(bool), result.finding_masks[name])
    np.testing.assert_array_equal(pixels.any(axis=-1), result.mask)
    assert list(seg.PatientOrientation) == ["L", "F"]
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )


def test_fractional_seg_decodes_to_guidance(
    written: dict[str, Path], source: pydicom.Dataset, result: EditResult
) -> None:
    fseg = hd.seg.segread(written["fseg"])
    assert fseg.SegmentationType == "FRACTIONAL" and fseg.SegmentationFractionalType == "PROBABILITY"
    assert (fseg.Rows, fseg.Columns) == (source.Rows, source.Columns)
    decoded = fseg.get_pixels_by_source_instance([source.SOPInstanceUID], rescale_fractional=True)[0, ..., 0]
    assert np.abs(decoded - result.guidance).max() <= 0.5 / 255 + 1e-6


def test_parametric_map_is_guidance_on_a_new_detector_frame(
    read: dict[str, pydicom.Dataset], written: dict[str, Path], source: pydicom.Dataset, result: EditResult
) -> None:
    pm = read["pmap"]
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert (pm.Rows, pm.Columns) == (source.Rows, source.Columns)
    assert pm.BitsAllocated == 32 and "FloatPixelData" in pm
    values = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(pm.Rows, pm.Columns)
    np.testing.assert_array_equal(values, result.guidance)
    volume = hd.imread(written["pmap"]).get_volume()  # highdicom reads it back in its own frame
    np.testing.assert_allclose(volume.array[0], result.guidance, atol=1e-7)
    shared = pm.SharedFunctionalGroupsSequence[0]
    mapping = shared.RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130402"
    assert (mapping.DoubleFloatRealWorldValueFirstValueMapped, mapping.DoubleFloatRealWorldValueLastValueMapped) == (
        0.0,
        1.0,
    )
    assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
    # the CR has no frame: a new one for the detector plane (geometry of every derived object: see below)
    assert "FrameOfReferenceUID" not in source and pm.FrameOfReferenceUID.startswith("2.25.")
    description = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].DerivationDescription
    assert "NOT shared with the source" in description and "NOMINAL 1 mm" in description


@pytest.mark.parametrize("kind", ["seg", "fseg", "pmap"])
def test_derived_objects_carry_viewer_geometry_on_one_frame(
    read: dict[str, pydicom.Dataset], source: pydicom.Dataset, kind: str
) -> None:
    """OHIF 3.x needs shared Pixel Measures and a Plane Orientation on a SEG (without them it crashes:
    "Cannot destructure property 'SpacingBetweenSlices' of 'PixelMeasures'"). The chest CR has no
    frame, an invalid 0\\0 Pixel Spacing (never copied) and no Imager Pixel Spacing: nominal 1 mm, said
    so; the image plane 1\\0\\0\\0\\1\\0 (where viewers put an image without orientation); one frame for
    the two SEGs and the PM."""
    ds = read[kind]
    assert ds.FrameOfReferenceUID == read["pmap"].FrameOfReferenceUID
    assert "PositionReferenceIndicator" in ds and not ds.PositionReferenceIndicator
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [1.0, 1.0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    for frame in ds.PerFrameFunctionalGroupsSequence:
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [0, 0, 0]
    if kind != "pmap":  # the Parametric Map IOD has no General Image module, so no Patient Orientation
        assert list(ds.PatientOrientation) == ["L", "F"]  # the anatomy, from the source
    description = (ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].DerivationDescription
                   if kind == "pmap" else ds.DerivationDescription)
    assert "NOMINAL 1 mm" in description and "NOT shared with the source" in description


def test_overlay_is_grey_source_with_red_guidance(read: dict[str, pydicom.Dataset], result: EditResult) -> None:
    ov = read["overlay"]
    assert ov.PhotometricInterpretation == "RGB" and ov.SamplesPerPixel == 3
    assert ov.ConversionType == "SYN" and list(ov.ImageType) == ["DERIVED", "SECONDARY"]
    rgb = ov.pixel_array.astype(int)
    assert rgb.shape == (*result.guidance.shape, 3)
    grey = result.guidance < 1e-4
    assert (rgb[grey][:, 0] == rgb[grey][:, 1]).all() and (rgb[grey][:, 1] == rgb[grey][:, 2]).all()
    hot = result.guidance > 0.5
    assert (rgb[hot][:, 0] > rgb[hot][:, 1]).all()


def _all_uids(datasets: dict[str, pydicom.Dataset]) -> dict[str, Any]:
    out: dict[str, Any] = output_uids(datasets)
    out["frame"] = datasets["pmap"].FrameOfReferenceUID
    out["dimension"] = [datasets[k].DimensionOrganizationSequence[0].DimensionOrganizationUID
                        for k in ("seg", "fseg", "pmap")]
    return out


def test_uids_are_deterministic_per_job(source: pydicom.Dataset, result: EditResult, read: dict[str, Any]) -> None:
    again = encode_results(source, result, job_key="job-key-1")
    assert _all_uids(again) == _all_uids(read)
    other = encode_results(source, result, job_key="job-key-2")
    first, second = _all_uids(read), _all_uids(other)
    assert all(first[k]["sop"] != second[k]["sop"] for k in KINDS)
    assert first["frame"] != second["frame"]


def test_uid_root_from_settings(source: pydicom.Dataset, result: EditResult) -> None:
    settings = load_settings(None, results=ResultsConfig(uid_root="1.2.826.0.1.3680043.10.999"))
    datasets = encode_results(source, result, job_key="job-key-1", settings=settings)
    for ds in datasets.values():
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID):
            assert uid.startswith("1.2.826.0.1.3680043.10.999.") and len(uid) <= 64
            assert pydicom.uid.UID(uid).is_valid


def test_derivation_description_fits_st(source: pydicom.Dataset) -> None:
    result = synthetic_result(source)
    result.model_id = "a-very-long-model-identifier/" * 40
    sc = encode_results(source, result, job_key="k")["counterfactual"]
    assert len(sc.DerivationDescription) <= ST_MAX_CHARS and sc.DerivationDescription.startswith("SYNTHETIC")


@pytest.mark.integration
@pytest.mark.slow
def test_x2x_edit_writes_five_valid_objects_from_the_real_editor(
    chest_cr_path: Path, source: pydicom.Dataset, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`x2x edit CR.dcm --out DIR` runs the real editor (tiny random model, 2 steps) and writes the
    five objects beside its own files: all valid; the SEG is the editor's mask (mask.png), the
    FRACTIONAL SEG its guidance (guidance.npy), the SC the source outside the mask."""
    from PIL import Image

    from tests.support.node import X2X

    out = tmp_path / "edit"
    done = subprocess.run(
        [X2X, "edit", str(chest_cr_path), "-i", "Add the finding of left pleural effusion.", "--out", str(out),
         "--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "X2X_CONFIG"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in KINDS:
        errors, _warnings, text = dciodvfy_report(out / FILE_NAMES[kind])
        assert errors == [], f"{kind}:\n{text}"
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    guidance = np.load(out / "guidance.npy")
    assert mask.shape == (source.Rows, source.Columns) and mask.any()
    seg = hd.seg.segread(out / "seg.dcm")
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)[0]
    np.testing.assert_array_equal(pixels.any(axis=-1), mask)
    fseg = hd.seg.segread(out / "fseg.dcm")
    decoded = fseg.get_pixels_by_source_instance([source.SOPInstanceUID], rescale_fractional=True)[0, ..., 0]
    assert np.abs(decoded - guidance).max() <= 0.5 / 255 + 1e-6
    sc = pydicom.dcmread(out / "counterfactual.dcm")
    # the composite's feather ramps inward from the mask edge: outside the mask the pixels are the source's
    np.testing.assert_array_equal(sc.pixel_array[~mask], source.pixel_array[~mask])
    pm = pydicom.dcmread(out / "pmap.dcm")
    np.testing.assert_array_equal(np.frombuffer(pm.FloatPixelData, "<f4").reshape(mask.shape), guidance)


def _small_result(source: pydicom.Dataset) -> EditResult:
    mask = np.zeros((source.Rows, source.Columns), dtype=bool)
    mask[10:40, 12:44] = True
    guidance = np.where(mask, 0.8, 0.0).astype(np.float32)
    counterfactual = source.pixel_array.copy()
    counterfactual[mask] = counterfactual[mask] // 2 - 7
    return EditResult(
        counterfactual=counterfactual, relevance=guidance, guidance=guidance, mask=mask,
        finding_masks={"pleural effusion": mask}, coverage=float(mask.mean()),
        instruction=parse_instruction("Add the finding of pleural effusion."), prior_source="anatomy",
        seed=0, params=EditParams(steps=2), model_id="tiny", model_hash="f" * 64,
    )


@pytest.mark.integration
def test_signed_source_with_real_geometry(tmp_path: Path) -> None:
    """pydicom's CT_small (signed 16 bit, Frame of Reference + plane geometry): the SC keeps signed
    values and the rescale; the Parametric Map uses the source's own frame and geometry."""
    from pydicom.data import get_testdata_file

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    result = _small_result(source)
    paths = save_objects(encode_results(source, result, job_key="ct"), tmp_path)
    for kind, path in paths.items():
        errors, _warnings, text = dciodvfy_report(path)
        assert errors == [], f"{kind}:\n{text}"
    sc = pydicom.dcmread(paths["counterfactual"])
    assert sc.PixelRepresentation == 1 and sc.PhotometricInterpretation == "MONOCHROME2"
    np.testing.assert_array_equal(sc.pixel_array, result.counterfactual)
    assert (sc.RescaleSlope, sc.RescaleIntercept) == (source.RescaleSlope, source.RescaleIntercept)
    pm = pydicom.dcmread(paths["pmap"])
    assert pm.FrameOfReferenceUID == source.FrameOfReferenceUID
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in source.PixelSpacing]
    position = pm.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert [float(v) for v in position] == [float(v) for v in source.ImagePositionPatient]


@pytest.mark.integration
def test_empty_mask_still_encodes(source: pydicom.Dataset, tmp_path: Path) -> None:
    result = synthetic_result(source)
    result.mask = np.zeros_like(result.mask)
    result.finding_masks = {name: np.zeros_like(m) for name, m in result.finding_masks.items()}
    paths = save_objects(encode_results(source, result, job_key="empty"), tmp_path)
    errors, _warnings, text = dciodvfy_report(paths["seg"])
    assert errors == [], text
    seg = hd.seg.segread(paths["seg"])
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)[0]
    assert pixels.shape == (source.Rows, source.Columns, 2) and not pixels.any()
