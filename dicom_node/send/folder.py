"""Copy the objects into a folder as <study>/<series>/<sop>.dcm (atomic rename), e.g. for a
shared drive watched by another system."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from dicom_node.send.base import SendItem, SendReport, load


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
            target = self.path / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{sop}.dcm"
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
