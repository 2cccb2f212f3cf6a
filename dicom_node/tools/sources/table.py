"""`x2x batch TABLE.csv`: one edit per row of a MIMIC-EDIT-INSTRUCTION table (`x2x dataset build`'s
instructions.csv, or the research release's), the row's own instruction applied to its *past* image —
the model's input in training (editor/training/format.py).

Rows and images come from editor/evaluation/rows.py, the reader `x2x reproduce` uses: the same `split`
filter and the same image layouts (`<images>/images/<id>.png`, the release's `past/<id>`, MIMIC-CXR-JPG
via `--jpg-root` + `--metadata`). A row whose image is missing is skipped with the paths tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.tools.sources.base import BatchItem, Instructions, Prepared, SourceError
from dicom_node.tools.sources.folder import prepare_image

if TYPE_CHECKING:
    from dicom_node.send import SendReport


class TableSource:
    kind = "table"

    def __init__(self, table: Path, *, split: str | None = "test", images: Path | None = None,
                 jpg_root: Path | None = None, metadata: Path | None = None, limit: int | None = None):
        from editor.evaluation.rows import ImageLocator

        self.table, self.split, self.limit = table, split, limit
        self.images = images if images is not None else (table if table.is_dir() else table.parent)
        try:
            self.locator = ImageLocator(self.images, jpg_root=jpg_root, metadata=metadata)
        except (ValueError, OSError) as exc:
            raise SourceError(str(exc)) from None

    def describe(self) -> str:
        split = "every split" if self.split is None else f"split {self.split!r}"
        return f"MIMIC-EDIT-INSTRUCTION table {self.table} ({split}; images under {self.images})"

    def plan(self, instructions: Instructions) -> list[BatchItem]:
        from editor.evaluation.rows import read_rows

        try:
            rows = read_rows(self.table, split=self.split, limit=self.limit)
        except (OSError, ValueError) as exc:
            raise SourceError(str(exc)) from None
        if not rows:
            raise SourceError(f"no row of {self.describe()}")
        items = []
        for row in rows:
            path: Path | None = None
            label, missing = row.past_dicom_id, None
            try:
                found = self.locator.find(row.past_dicom_id, "past")
            except FileNotFoundError as exc:
                missing = str(exc)[:300]
            else:
                path = found
                label = found.relative_to(self.images).as_posix() if found.is_relative_to(self.images) else str(found)
            items.append(BatchItem(label, row.instruction, instructions.seed, ref=path, sop_uid=row.past_dicom_id,
                                   key_basis=f"table:{row.key}", precheck=missing))
        return items

    def fetch(self, item: BatchItem) -> Prepared:
        return prepare_image(item.ref, item.sop_uid)

    def store_back(self, files: Sequence[Path]) -> SendReport | None:
        return None

    def close(self) -> None:
        pass
