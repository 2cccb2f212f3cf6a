"""An append-only CSV table with one fsync'ed row per finished item: what makes long runs resumable.

A crash can leave a half-written last line; opening the table drops it (its item is simply redone).
`done_keys` are the keys of the rows already there, so a rerun skips them. A table written with other
columns (another version, another command) is refused rather than appended to misaligned. Used by `x2x batch`
(dicom_node/tools/batch.py, manifest.csv) and `x2x reproduce` (editor/evaluation/driver.py, edits.csv).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["AppendOnlyTable", "read_table"]


class AppendOnlyTable:
    def __init__(self, path: str | Path, columns: Sequence[str], *, key: str) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self.key = key
        self.done_keys: set[str] = set()
        self.rows: list[dict[str, str]] = []
        if self.path.exists():
            self._recover()
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self._writer.writeheader()
            self._sync()

    def _recover(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(self.path, "r+b") as fh:
                fh.truncate(len(raw))
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
        if reader.fieldnames is not None and tuple(reader.fieldnames) != self.columns:
            raise ValueError(f"{self.path} has other columns than this version writes "
                             f"({', '.join(reader.fieldnames)}); use a new output folder")
        for row in reader:
            if row.get(self.key):
                self.done_keys.add(row[self.key])
                self.rows.append(row)

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and fsync before returning: once this returns, the row survives a crash."""
        values = {c: "" if row.get(c) is None else row.get(c) for c in self.columns}
        self._writer.writerow(values)
        self._sync()
        self.done_keys.add(str(row[self.key]))
        self.rows.append({c: str(v) for c, v in values.items()})

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> AppendOnlyTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_table(path: str | Path) -> list[dict[str, str]]:
    """Every complete row of a table (a half-written last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
