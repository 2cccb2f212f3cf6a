"""`x2x batch`: edit every eligible radiograph in a folder tree (research archives).

For each (file, instruction) item: the five DICOM objects (same encoder and deterministic UIDs as a
node job) + PNG previews + result.json go to `<out>/<sop uid>-<key8>/`, and one row is appended to
`<out>/manifest.csv` (fsync per row). A rerun reads the manifest and skips every item that already has
a row (done, skipped or failed), so an interrupted run resumes where it stopped without duplicates;
an item interrupted half way has no row and is redone (its writes are atomic and deterministic).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editor.append_table import AppendOnlyTable

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from editor import Editor, EditParams

log = logging.getLogger("x2x.batch")

MANIFEST = "manifest.csv"
COLUMNS = (
    "item_key",
    "source_path",
    "source_uid",
    "instruction",
    "status",  # done | skipped | failed
    "reason",
    "outputs",  # ;-separated paths relative to the output folder
    "coverage",
    "seconds",
    "seed",
    "sent",
)


@dataclass(frozen=True)
class BatchItem:
    path: Path  # absolute
    rel: str  # relative to the source folder (manifest key part; stable across runs)
    instruction: str
    seed: int

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.rel}\0{self.instruction}\0{self.seed}".encode()).hexdigest()[:24]


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    already: int = 0  # rows found in the manifest from an earlier run
    interrupted: bool = False
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


class Manifest(AppendOnlyTable):
    """Append-only CSV; one fsync'ed row per finished item (editor.append_table)."""

    def __init__(self, out_dir: Path):
        super().__init__(out_dir / MANIFEST, COLUMNS, key="item_key")


def read_instructions_csv(path: Path) -> dict[str, list[tuple[str, int | None]]]:
    """CSV with columns `path` (relative to SRC) or `sop_instance_uid`, `instruction`, optional `seed`.
    Returns selector -> [(instruction, seed)]; a file may get several instructions."""
    out: dict[str, list[tuple[str, int | None]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if "instruction" not in cols or not cols & {"path", "sop_instance_uid"}:
            raise ValueError(f"{path}: needs an 'instruction' column and a 'path' or 'sop_instance_uid' column")
        for row in reader:
            selector = (row.get("path") or row.get("sop_instance_uid") or "").strip()
            if not selector or not (row.get("instruction") or "").strip():
                continue
            seed = int(row["seed"]) if (row.get("seed") or "").strip() else None
            out.setdefault(selector, []).append((row["instruction"].strip(), seed))
    return out


def walk(src: Path) -> Iterator[Path]:
    """Every regular file under src, in a stable order (hidden files and folders excluded)."""
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _sop_uid(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID)
    except Exception:
        return None


def plan_items(
    src: Path, *, instruction: str | None, per_file: dict[str, list[tuple[str, int | None]]] | None, seed: int
) -> list[BatchItem]:
    items: list[BatchItem] = []
    for path in walk(src):
        rel = path.relative_to(src).as_posix()
        if per_file is None:
            assert instruction is not None
            items.append(BatchItem(path, rel, instruction, seed))
            continue
        wanted = per_file.get(rel)
        if wanted is None:
            uid = _sop_uid(path)
            wanted = per_file.get(uid) if uid else None
        if wanted is None:
            items.append(BatchItem(path, rel, "", seed))  # recorded as skipped: no instruction
            continue
        for text, item_seed in wanted:
            items.append(BatchItem(path, rel, text, seed if item_seed is None else item_seed))
    return items


@dataclass
class BatchRunner:
    out_dir: Path
    editor_factory: Callable[[], Editor]
    params: EditParams
    settings: Any  # dicom_node.config.Settings
    send_to: str | None = None  # AE@host:port
    _editor: Editor | None = None

    def editor(self) -> Editor:
        if self._editor is None:
            self._editor = self.editor_factory()
        return self._editor

    def check(self, item: BatchItem) -> tuple[Dataset | None, str | None]:
        """(dataset, None) when the item is to be edited, else (None, reason)."""
        import pydicom

        from dicom_node.results import is_dicom_file
        from dicom_node.studies.eligibility import skip_reason

        if not item.instruction:
            return None, "no instruction for this file in the instructions CSV"
        if not is_dicom_file(item.path):
            return None, "not a DICOM file"
        try:
            ds = pydicom.dcmread(item.path)
        except Exception as exc:
            return None, f"unreadable DICOM: {type(exc).__name__}"
        if "SOPInstanceUID" not in ds:  # a DICM header over garbage parses as an empty data set
            return None, "unreadable DICOM: no SOP Instance UID"
        reason = skip_reason(ds, has_pixel_data="PixelData" in ds)
        if reason is not None:
            return None, reason
        return ds, None

    def run_item(self, item: BatchItem) -> dict[str, Any]:
        """Edit one item and write its outputs; returns its manifest row."""
        from dicom_node.edit_params import job_key
        from dicom_node.results import write_outputs
        from editor import InstructionError, UnsupportedImageError, source_from_dataset

        started = time.perf_counter()
        row: dict[str, Any] = {"item_key": item.key, "source_path": item.rel, "instruction": item.instruction,
                               "seed": item.seed}
        ds, reason = self.check(item)
        if ds is None:
            return row | {"status": "skipped", "reason": reason}
        row["source_uid"] = str(ds.SOPInstanceUID)
        try:
            source = source_from_dataset(ds)
            result = self.editor().edit(source, item.instruction, seed=item.seed, params=self.params)
        except (InstructionError, UnsupportedImageError) as exc:
            return row | {"status": "skipped", "reason": str(exc).splitlines()[0][:300]}
        except Exception as exc:  # one bad file must not stop a night-long batch
            log.warning("edit failed for %s: %s", item.rel, exc, exc_info=True)
            return row | {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300]}
        key = job_key(row["source_uid"], result.prompt, result.model_hash, item.seed, self.params)
        folder = self.out_dir / f"{row['source_uid']}-{key[:8]}"
        written = write_outputs(result, folder, source=source, source_ds=ds, job_key=key, settings=self.settings)
        sent = self._send(list(written.dicom.values())) if self.send_to else ""
        row |= {
            "status": "done",
            "instruction": result.prompt,
            "outputs": ";".join(p.relative_to(self.out_dir).as_posix() for p in written.all_paths),
            "coverage": f"{result.coverage:.6f}",
            "seconds": f"{time.perf_counter() - started:.3f}",
            "sent": sent,
            "reason": "",
        }
        return row

    def _send(self, files: list[Path]) -> str:
        from dicom_node.config import CStoreDestination
        from dicom_node.send import get_sender

        assert self.send_to is not None
        ae, host, port = parse_peer(self.send_to)
        sender = get_sender(CStoreDestination(type="cstore", ae_title=ae, host=host, port=port), name=self.send_to,
                            calling_ae=self.settings.node.ae_title)
        report = sender.send(files)
        return "ok" if report.ok else f"failed: {report.error_summary()}"[:300]


def parse_peer(text: str) -> tuple[str, str, int]:
    """'AE@host:port' -> (AE, host, port)."""
    ae, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not ae or not host or not port.isdigit():
        raise ValueError(f"expected AE@host:port, got {text!r}")
    return ae, host, int(port)
