"""What every `x2x batch` source is: a plan of items (cheap: a folder walk, a query), then `fetch` per item
(a file read or a retrieval, run in the prefetch pool), then optionally `store_back` of the results.

    plan(instructions) -> [BatchItem]    raises SourceError (unreachable, refused, bad query)
    fetch(item) -> Prepared              thread-safe; raises Skip (ineligible), SourceUnavailable (the
                                         archive is gone: the run stops, the item gets no row), or any
                                         other exception (this item failed: a row says why)
    store_back(files) -> SendReport      the source archive as a destination (DICOMweb, PACS); None if not
    close()

A BatchItem's `key` is stable across runs: it is the manifest's key, so a rerun skips finished items
before anything is fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicom_node.send import SendReport
    from editor import SourceImage


T = TypeVar("T")


class ConnectionPool(Generic[T]):
    """Idle connections (associations, HTTP clients) shared by the prefetch threads: a fetch borrows one,
    or opens one when none is idle, and gives it back; so there are never more open than fetches running
    at once, and none is left behind by a finished thread. A connection that failed is dropped, not reused."""

    def __init__(self, open_one: Callable[[], T], close_one: Callable[[T], None],
                 discard: Callable[[T], None] | None = None, alive: Callable[[T], bool] = lambda _: True):
        self._open, self._close = open_one, close_one
        self._discard = discard or close_one  # for a connection that failed (e.g. abort, not release)
        self._alive = alive  # an idle one the peer has closed meanwhile is dropped, not handed out
        self._idle: list[T] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[T]:
        conn = None
        while conn is None:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._open()
            elif not self._alive(conn):
                self._discard(conn)
                conn = None
        try:
            yield conn
        except BaseException:
            self._discard(conn)
            raise
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._close(conn)


class SourceError(Exception):
    """The source cannot be used at all (unreachable, association refused, bad query, nothing matched)."""


class SourceUnavailable(SourceError):
    """The archive went away during the run: stop, keep every finished row, rerun to resume."""


class Skip(Exception):  # noqa: N818 - an outcome, not an error
    """This item is not edited; the message is the manifest's reason."""


@dataclass(frozen=True)
class BatchItem:
    label: str  # manifest `source_path`: relative path, dataset id, or study/series/instance UIDs
    instruction: str  # "" = none given for this input (recorded as skipped)
    seed: int
    ref: Any = field(default=None, compare=False)  # what the source needs to fetch it
    key_basis: str = ""  # identity of the input (default: the label)
    sop_uid: str = ""
    study_uid: str = ""
    precheck: str | None = None  # a skip reason already known from the query: nothing is retrieved

    @property
    def key(self) -> str:
        basis = self.key_basis or self.label
        return hashlib.sha256(f"{basis}\0{self.instruction}\0{self.seed}".encode()).hexdigest()[:24]


@dataclass
class Prepared:
    """A fetched item, ready for the editor."""

    source: SourceImage
    dataset: Dataset | None = None  # DICOM sources: the five objects are encoded from it
    uid: str = ""  # the source's SOP Instance UID, or the image's id (the job key's first part)
    study_uid: str = ""
    seconds: float = 0.0  # time spent fetching and decoding


class Source(Protocol):
    kind: str  # "folder" | "table" | "dicomweb" | "pacs"

    def describe(self) -> str: ...

    def plan(self, instructions: Instructions) -> list[BatchItem]: ...

    def fetch(self, item: BatchItem) -> Prepared: ...

    def store_back(self, files: Sequence[Path]) -> SendReport | None: ...

    def close(self) -> None: ...


Selector = dict[str, list[tuple[str, int | None]]]


@dataclass
class Instructions:
    """One instruction for every input, or per input from a CSV (selector -> [(instruction, seed)])."""

    seed: int
    default: str | None = None
    per_input: Selector | None = None

    def lookup(self, *selectors: str | None) -> list[tuple[str, int]] | None:
        """The (instruction, seed) pairs for the first selector the CSV names; None when it names none."""
        if self.per_input is None:
            assert self.default is not None
            return [(self.default, self.seed)]
        for selector in selectors:
            if selector and selector in self.per_input:
                return [(text, self.seed if seed is None else seed) for text, seed in self.per_input[selector]]
        return None


def prepare_dataset(ds: Dataset, *, seconds: float = 0.0) -> Prepared:
    """A retrieved/read DICOM data set -> Prepared, or Skip with the reason it is not edited."""
    from dicom_node.studies.eligibility import skip_reason
    from editor import UnsupportedImageError, source_from_dataset

    if "SOPInstanceUID" not in ds:  # a DICM header over garbage parses as an empty data set
        raise Skip("unreadable DICOM: no SOP Instance UID")
    if str(ds.get("SyntheticData", "")).strip().upper() == "YES":
        raise Skip("synthetic image (Synthetic Data YES): outputs are never edited again")
    reason = skip_reason(ds, has_pixel_data="PixelData" in ds)
    if reason is not None:
        raise Skip(reason)
    try:
        source = source_from_dataset(ds)
    except UnsupportedImageError as exc:
        raise Skip(str(exc).splitlines()[0][:300]) from exc
    return Prepared(source=source, dataset=ds, uid=str(ds.SOPInstanceUID),
                    study_uid=str(ds.get("StudyInstanceUID", "")), seconds=seconds)
