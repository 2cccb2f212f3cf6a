"""`x2x batch SRC`: a local folder tree of DICOM files and/or PNG/JPG images.

DICOM files (by content: preamble + DICM, or a .dcm name) are checked like received instances and give
the five DICOM objects; PNG/JPG files are edited as display images (8/16-bit greyscale, bone bright) and
give image files only; anything else is skipped with a reason. An image carries no View Position or
Patient Orientation: it is edited as a frontal image in the standard orientation (the editor's
provenance says it assumed so). Items are keyed by their path relative to SRC, stable across runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.tools.sources.base import BatchItem, Instructions, Prepared, Skip

if TYPE_CHECKING:
    from dicom_node.send import SendReport

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def walk(src: Path) -> Iterator[Path]:
    """Every regular file under src, in a stable order (hidden files and folders excluded)."""
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _sop_uid(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID)
    except Exception:
        return None


def image_id(rel: str) -> str:
    """An image's id in outputs and job keys: its relative path with / as -, without the suffix."""
    return str(Path(rel).with_suffix("")).replace("/", "-").replace("\\", "-")


def prepare_image(path: Path, uid: str) -> Prepared:
    from editor import UnsupportedImageError, source_from_file

    started = time.perf_counter()
    try:
        source = source_from_file(path)
    except UnsupportedImageError as exc:
        raise Skip(str(exc).splitlines()[0][:300]) from exc
    except OSError as exc:  # truncated / not really an image
        raise Skip(f"unreadable image: {type(exc).__name__}: {str(exc)[:200]}") from exc
    return Prepared(source=source, uid=uid, seconds=time.perf_counter() - started)


class FolderSource:
    kind = "folder"

    def __init__(self, root: Path):
        self.root = root.resolve()

    def describe(self) -> str:
        return f"folder {self.root}"

    def plan(self, instructions: Instructions) -> list[BatchItem]:
        items: list[BatchItem] = []
        for path in walk(self.root):
            rel = path.relative_to(self.root).as_posix()
            wanted = instructions.lookup(rel)
            if wanted is None and not is_image_file(path):
                wanted = instructions.lookup(_sop_uid(path))
            if wanted is None:
                items.append(BatchItem(rel, "", instructions.seed, ref=path))  # skipped: no instruction
                continue
            items += [BatchItem(rel, text, seed, ref=path) for text, seed in wanted]
        return items

    def fetch(self, item: BatchItem) -> Prepared:
        import pydicom

        from dicom_node.results import is_dicom_file
        from dicom_node.tools.sources.base import prepare_dataset

        path: Path = item.ref
        if is_image_file(path) and not is_dicom_file(path):
            return prepare_image(path, image_id(item.label))
        if not is_dicom_file(path):
            raise Skip("not a DICOM file or a PNG/JPG image")
        started = time.perf_counter()
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise Skip(f"unreadable DICOM: {type(exc).__name__}") from exc
        return prepare_dataset(ds, seconds=time.perf_counter() - started)

    def store_back(self, files: Sequence[Path]) -> SendReport | None:
        return None

    def close(self) -> None:
        pass
