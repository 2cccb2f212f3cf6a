"""A research archive for `x2x batch` tests: a real Orthanc answering QIDO-RS/WADO-RS/STOW-RS and C-FIND/
C-GET/C-MOVE, loaded with two small studies.

Study A (StudyDate 20240115): series 1 = `n_frontal` frontal chest CRs, series 2 = one lateral CR,
series 3 = one MR. Study B (StudyDate 20230301): one frontal CR. Images are the pydicom-data chest CR
downscaled 4x (new UIDs).

Orthanc's Lua `IncomingHttpRequestFilter` lets a DICOMweb request through only with the bearer token
`TOKEN` or the basic-auth `USER`/`PASSWORD`, and appends "METHOD URI" of each one to `requests_log`:
an independent record of what the batch retrieved (a test counts WADO-RS GETs per instance). The
DICOM side knows one modality, `CALLING_AE` at 127.0.0.1:`move_port` (the C-MOVE destination the batch
starts), and checks the called AE title (so a wrong one is refused).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.support.chest_copies import chest_copy
from tests.support.orthanc import Orthanc

TOKEN = "tok-9f2c-secret-bearer"
USER, PASSWORD = "researcher", "pw-7781-secret"
CALLING_AE = "X2X"

_LUA = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if string.sub(uri, 1, 10) ~= '/dicom-web' then return true end
  local f = io.open('{log}', 'a')
  f:write(method .. ' ' .. uri .. '\\n')
  f:close()
  local auth = httpHeaders['authorization']
  return auth == 'Bearer {token}' or auth == 'Basic {basic}'
end
"""


@dataclass
class Archive:
    orthanc: Orthanc
    move_port: int
    requests_log: Path
    study_a: str = ""
    study_b: str = ""
    frontal: list[str] = field(default_factory=list)  # SOP UIDs of study A's frontal CRs
    lateral: str = ""
    mr: str = ""
    study_b_cr: str = ""

    @property
    def pacs(self) -> str:
        return f"{self.orthanc.ae_title}@127.0.0.1:{self.orthanc.dicom_port}"

    def wado_gets(self) -> dict[str, int]:
        """SOP Instance UID -> number of WADO-RS instance retrievals the archive saw."""
        counts: dict[str, int] = {}
        if not self.requests_log.exists():
            return counts
        for line in self.requests_log.read_text().splitlines():
            method, _, uri = line.partition(" ")
            parts = uri.split("?")[0].strip("/").split("/")
            if method == "GET" and len(parts) == 7 and parts[5] == "instances":
                counts[parts[6]] = counts.get(parts[6], 0) + 1
        return counts


def start_archive(work_dir: Path, chest_cr_path: Path, pydicom_data_dir: Path, *, n_frontal: int = 3) -> Archive:
    from tests.conftest import free_port

    log = work_dir / "dicomweb-requests.log"
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    move_port = free_port()
    orthanc = Orthanc(work_dir / "orthanc", modalities={"batch": (CALLING_AE, "127.0.0.1", move_port)},
                      extra={"DicomCheckCalledAet": True},
                      lua=_LUA.format(log=log, token=TOKEN, basic=basic)).start()
    archive = Archive(orthanc, move_port, log, study_a=generate_uid(), study_b=generate_uid())
    files = work_dir / "loaded"
    files.mkdir(parents=True, exist_ok=True)

    def load(ds: pydicom.Dataset) -> str:
        path = files / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
        return str(ds.SOPInstanceUID)

    frontal_series = generate_uid()
    for _ in range(n_frontal):
        archive.frontal.append(load(chest_copy(chest_cr_path, study_uid=archive.study_a, StudyDate="20240115",
                                               SeriesInstanceUID=frontal_series)))
    template = chest_copy(chest_cr_path, study_uid=archive.study_a)
    archive.lateral = load(chest_copy(chest_cr_path, study_uid=archive.study_a, StudyDate="20240115",
                                      ViewPosition="LL"))
    mr = pydicom.dcmread(pydicom_data_dir / "MR2_UNCR.dcm")
    mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID = archive.study_a, generate_uid(), generate_uid()
    mr.file_meta.MediaStorageSOPInstanceUID = mr.SOPInstanceUID
    mr.PatientID, mr.PatientName, mr.StudyDate = template.PatientID, template.PatientName, "20240115"
    archive.mr = load(mr)
    archive.study_b_cr = load(chest_copy(chest_cr_path, study_uid=archive.study_b, StudyDate="20230301"))
    return archive
