"""Copy the objects into a folder as <study>/<series>/<sop>.dcm (atomic rename), e.g. for a
shared drive watched by another system.

The names come from the objects' UIDs, and the Study Instance UID is the sender's: every name is made
safe the way the spool makes it (`inbound.spool.safe_name`: the UID itself when it is a plain file
name, else a stable hash of it), and the final path is checked to lie inside the destination folder
before anything is written. An object whose path would leave the folder fails, naming why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from dicom_node.inbound.spool import safe_name
from dicom_node.send.base import SendItem, SendReport, load


class UnsafePath(ValueError):
    """A path built from an object's UIDs would lie outside the destination folder."""


def target_path(root: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """<root>/<study>/<series>/<sop>.dcm with every part a safe name, checked to stay inside `root`."""
    base = root.resolve()
    target = base / safe_name(study_uid) / safe_name(series_uid) / f"{safe_name(sop_uid)}.dcm"
    resolved = target.resolve()  # a symlink planted inside the folder must not lead out of it either
    if not resolved.is_relative_to(base):
        raise UnsafePath(f"{resolved} is outside {base}")
    return resolved


class FolderSender:
    def __init__(self, name: str, *, path: Path):
        self.name = name
        self.path = Path(path)

    def send(self, items: Sequence[SendItem]) -> SendReport:
        start = time.monotonic()
        report = SendReport(destination=f"{self.name} ({self.path})")
        for item in items:
            ds = load(item)
            sop = str(ds.SOPInstanceUID)
            try:
                target = target_path(self.path, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sop)
            except UnsafePath as exc:
                report.failed[sop] = f"refused: {exc}"
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp")
                ds.save_as(tmp, enforce_file_format=True)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                tmp.replace(target)
                report.sent.append(sop)
            except OSError as exc:
                report.failed[sop] = f"write failed: {exc.strerror or exc}"
        report.seconds = time.monotonic() - start
        return report
