"""The viewer support table of docs/dicom-outputs.md, measured: which of the five objects Orthanc Explorer's
previews, the Orthanc Web Viewer (Debian orthanc-webviewer), dcmtk's dcm2pnm and highdicom's readers show,
on the real chest CR (1955 x 1841: an odd number of columns). OHIF is measured by test_viewer_ohif.py.

Each assertion is one cell of the table; a change in the node or in a tool that changes a cell fails here
and the table must be updated with it.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from dicom_node.results import KINDS, encode_results, save_objects
from editor.types import EditResult
from tests.conftest import require_tool
from tests.support.dicom_files import renumbered_copy
from tests.support.orthanc import Orthanc
from tests.test_results import synthetic_result

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# kind -> shown? (the table's cells for the chest CR)
ORTHANC_PREVIEW = {"counterfactual": True, "seg": False, "fseg": True, "pmap": False, "overlay": True}
DCM2PNM = {"counterfactual": True, "seg": True, "fseg": True, "pmap": False, "overlay": True}


@pytest.fixture(scope="module")
def source_result(chest_cr_path: Path) -> tuple[pydicom.Dataset, EditResult]:
    source = pydicom.dcmread(chest_cr_path)
    return source, synthetic_result(source)


@pytest.fixture(scope="module")
def chest_objects(source_result: tuple[pydicom.Dataset, EditResult],
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    source, result = source_result
    return save_objects(encode_results(source, result, job_key="viewers"), tmp_path_factory.mktemp("viewers"))


PacsWithObjects = tuple[Orthanc, dict[str, str]]


@pytest.fixture(scope="module")
def orthanc_with_objects(chest_objects: dict[str, Path],
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsWithObjects]:
    with Orthanc(tmp_path_factory.mktemp("orthanc"), webviewer=True) as orthanc:
        ids = {}
        for kind, path in chest_objects.items():
            response = requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=60)
            response.raise_for_status()
            ids[kind] = response.json()["ID"]
        yield orthanc, ids


@pytest.mark.parametrize("kind", KINDS)
def test_orthanc_explorer_preview(orthanc_with_objects: PacsWithObjects, kind: str) -> None:
    """Orthanc 1.10 cannot decode a 1-bit frame whose columns are not a multiple of 8 ("Bad number of
    columns for a black-and-white image"), nor float pixels: 415 for the BINARY SEG and the PM."""
    orthanc, ids = orthanc_with_objects
    response = requests.get(f"{orthanc.url}/instances/{ids[kind]}/preview", timeout=60)
    if ORTHANC_PREVIEW[kind]:
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(response.content))
        assert image.size == (1841, 1955)
        assert np.asarray(image.convert("L")).std() > 10  # not a blank picture
    else:
        assert response.status_code == 415, response.status_code


@pytest.mark.parametrize("kind", KINDS)
def test_orthanc_web_viewer_decodes(orthanc_with_objects: PacsWithObjects, kind: str) -> None:
    """The Orthanc Web Viewer fetches each frame from its plugin (/web-viewer/instances/<compression>-<id>_<frame>),
    decoded by Orthanc's own decoder: the same objects fail (500) as in the previews."""
    orthanc, ids = orthanc_with_objects
    response = requests.get(f"{orthanc.url}/web-viewer/instances/jpeg95-{ids[kind]}_0", timeout=120)
    assert response.status_code == (200 if ORTHANC_PREVIEW[kind] else 500), response.text[:300]


def test_binary_seg_previews_in_orthanc_when_columns_are_a_multiple_of_8(chest_cr_path: Path, tmp_path: Path) -> None:
    """The BINARY SEG is not at fault: on a 1600 x 1600 crop of the same CR Orthanc previews it."""
    cropped = pydicom.dcmread(renumbered_copy(chest_cr_path, tmp_path / "crop.dcm", crop=1600))
    paths = save_objects(encode_results(cropped, synthetic_result(cropped), job_key="crop"), tmp_path / "out")
    with Orthanc(tmp_path / "orthanc") as orthanc:
        response = requests.post(f"{orthanc.url}/instances", data=paths["seg"].read_bytes(), timeout=60)
        response.raise_for_status()
        preview = requests.get(f"{orthanc.url}/instances/{response.json()['ID']}/preview", timeout=60)
    assert preview.status_code == 200, preview.text


@pytest.mark.parametrize("kind", KINDS)
def test_dcm2pnm(chest_objects: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """dcmtk's dcm2pnm renders all but the float Parametric Map ("no pixel data found": it reads Pixel Data
    only, not Float Pixel Data); for a SEG it renders frame 1, the first segment."""
    out = tmp_path / f"{kind}.png"
    done = subprocess.run([require_tool("dcm2pnm"), "+on", str(chest_objects[kind]), str(out)],
                          capture_output=True, text=True, timeout=120)
    if not DCM2PNM[kind]:
        assert done.returncode != 0 and "no pixel data" in done.stderr.lower(), done.stderr
        return
    assert done.returncode == 0, done.stderr
    rendered = np.asarray(Image.open(out).convert("L"))
    assert rendered.shape == (1955, 1841)
    if kind == "seg":
        first_segment = hd.seg.segread(chest_objects["seg"]).get_pixels_by_source_instance(
            [pydicom.dcmread(chest_objects["seg"], stop_before_pixels=True)
             .ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID],
            combine_segments=False)[0][..., 0]
        np.testing.assert_array_equal(rendered > 127, first_segment.astype(bool))


def test_highdicom_reads_every_object(chest_objects: dict[str, Path],
                                      source_result: tuple[pydicom.Dataset, EditResult]) -> None:
    """highdicom reads all five back: the SEGs by source instance, the PM as a volume in its frame."""
    source, result = source_result
    binary = hd.seg.segread(chest_objects["seg"]).get_pixels_by_source_instance(
        [source.SOPInstanceUID], combine_segments=True)[0]
    np.testing.assert_array_equal(binary.astype(bool), result.mask)
    fractional = hd.seg.segread(chest_objects["fseg"]).get_pixels_by_source_instance(
        [source.SOPInstanceUID], rescale_fractional=True)[0, ..., 0]
    assert np.abs(fractional - result.guidance).max() <= 0.5 / 255 + 1e-6
    volume = hd.imread(chest_objects["pmap"]).get_volume()
    np.testing.assert_allclose(volume.array[0], result.guidance, atol=1e-7)
    for kind in ("counterfactual", "overlay"):
        assert hd.imread(chest_objects[kind]).get_frame(1).shape[:2] == (1955, 1841)
