"""Durable spool: every received instance as a complete DICOM file, exactly the bytes that arrived.

Layout: `<root>/<study uid>/<series uid>/<sop uid>.dcm`, plus one small `.origin-*.json` per study and
(called AE, calling AE, origin) triple, so that a restart knows which called-AE rule applies to a study
and whether it came over DIMSE or HTTP.

A store is durable before it is acknowledged: write to a temp file in the target folder, fsync, rename
atomically onto the final name, fsync the folder (one folder fsync serves every store that renamed into
it before the fsync began: `FolderSync`, a group commit across concurrent associations). Any OSError
(disk full, I/O error) removes the temp file and reports `OUT_OF_RESOURCES`; no partial `.dcm` is
ever visible.

One process receives into a spool: `claim_receiving()` takes an exclusive lock on `<root>/.receiving.lock`
(flock, released by the kernel when that process ends, however it ends). Only its holder deletes the temp
files of unfinished receipts at start, so a second node pointed at the same spool (SO_REUSEPORT would let
it share the port) stops with `SpoolInUse` instead of deleting the first one's receipts under way.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("x2x.spool")

_SAFE_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
TMP_SUFFIX = ".part"
RECEIVING_LOCK = ".receiving.lock"  # a dot name: never taken for a study folder


class SpoolInUse(RuntimeError):
    """Another process already receives into this spool."""


class ReceivingClaim:
    """Held by the one process that receives into a spool (see `Spool.claim_receiving`)."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


class StoreStatus(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already-stored"
    OUT_OF_RESOURCES = "out-of-resources"


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    path: Path
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not StoreStatus.OUT_OF_RESOURCES


@dataclass(frozen=True)
class FileSlice:
    """`length` bytes of an open file from `offset`: written by the kernel (copy_file_range), so a
    large instance received into a temporary file never passes through memory."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class SpooledStudy:
    study_uid: str  # the folder name (the UID itself unless it was unsafe as a file name)
    path: Path
    instances: list[Path] = field(default_factory=list)
    origins: list[dict[str, str | None]] = field(default_factory=list)  # {"called_ae", "calling_ae", "origin"}


def safe_name(uid: str) -> str:
    """The UID itself when it is a safe file name (real UIDs always are), else a stable hash."""
    uid = uid.strip().rstrip("\0")
    if _SAFE_NAME.match(uid) and uid not in (".", ".."):
        return uid
    return "x" + hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()


def _copy_range(src: FileSlice, fd: int) -> None:
    offset, left = src.offset, src.length
    while left > 0:
        try:
            n = os.copy_file_range(src.fd, fd, left, offset)
        except OSError:  # e.g. across file systems on an old kernel: plain reads, bounded chunks
            chunk = os.pread(src.fd, min(left, 1 << 20), offset)
            n = len(chunk)
            Spool._write_buffers(fd, [chunk])
        if n == 0:
            raise OSError(f"source ended {left} bytes early")
        offset += n
        left -= n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderSync:
    """Group commit of folder fsyncs. One fsync of a folder makes every rename into it that happened
    before that fsync started durable, so the instances that concurrent associations store into one
    series folder share one flush instead of queueing for one each. `sync(folder)` returns once a
    flush that started after the call has finished (the caller's rename came before the call)."""

    def __init__(self, fsync_dir: Callable[[Path], None] | None = None) -> None:
        self._fsync_dir = fsync_dir or _fsync_dir
        self._cond = threading.Condition()
        self._issued: dict[Path, int] = {}  # tickets handed out per folder
        self._synced: dict[Path, int] = {}  # every ticket up to this one is durable
        self._busy: set[Path] = set()  # folders with a flush running
        self._waiting: dict[Path, int] = {}  # callers inside sync() per folder
        self.flushes = 0  # fsyncs done (for benchmarks and tests)

    def sync(self, folder: Path) -> None:
        with self._cond:
            ticket = self._issued[folder] = self._issued.get(folder, 0) + 1
            self._waiting[folder] = self._waiting.get(folder, 0) + 1
            try:
                while self._synced.get(folder, 0) < ticket:
                    if folder in self._busy:  # a flush that may have started before our rename: wait it out
                        self._cond.wait()
                        continue
                    self._flush(folder)
            finally:
                self._waiting[folder] -= 1
                if not self._waiting[folder]:  # nobody left waiting on this folder: forget it
                    del self._waiting[folder], self._issued[folder]
                    self._synced.pop(folder, None)

    def _flush(self, folder: Path) -> None:
        """One fsync of `folder`, covering every ticket issued so far (called and returns holding _cond)."""
        self._busy.add(folder)
        covers = self._issued[folder]  # their renames are done
        self._cond.release()
        flushed = False
        try:
            self._fsync_dir(folder)
            flushed = True
        finally:
            self._cond.acquire()
            self._busy.discard(folder)
            if flushed:
                self.flushes += 1
                self._synced[folder] = max(self._synced.get(folder, 0), covers)
            self._cond.notify_all()


class Spool:
    def __init__(self, root: Path, *, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync  # False only for benchmarks: acknowledged instances may be lost in a crash
        self.root.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._known_origins: set[tuple[str, str | None, str | None, str]] = set()
        self._lock = threading.Lock()
        self.folder_sync = FolderSync()

    # paths -------------------------------------------------------------------------------
    def study_dir(self, study_uid: str) -> Path:
        return self.root / safe_name(study_uid)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.study_dir(study_uid) / safe_name(series_uid) / f"{safe_name(sop_uid)}.dcm"

    # writing -----------------------------------------------------------------------------
    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        if created:  # make the new folder entries themselves durable
            _fsync_dir(directory.parent)
            _fsync_dir(directory.parent.parent)
        with self._lock:
            self._known_dirs.add(directory)

    def free_bytes(self) -> int:
        """Space left for new instances on the spool's file system."""
        st = os.statvfs(self.root)
        return int(st.f_bavail * st.f_frsize)

    def store(
        self, raw: bytes | memoryview | Sequence[bytes | memoryview | FileSlice], *, study_uid: str, series_uid: str,
        sop_uid: str,
    ) -> StoreOutcome:
        """Durably store one instance; `raw` is the complete file (or its parts, written in order)."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        if final.exists():
            return StoreOutcome(StoreStatus.ALREADY_STORED, final)
        chunks: list[bytes | memoryview | FileSlice] = (
            [raw] if isinstance(raw, (bytes, bytearray, memoryview)) else list(raw)
        )
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
        fd = -1
        try:
            self._ensure_dir(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._write_all(fd, chunks)
            if self.fsync:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, final)
            if self.fsync:
                self.folder_sync.sync(final.parent)  # shared with concurrent stores into this folder
        except OSError as exc:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with self._lock:
                self._known_dirs.discard(final.parent)
            log.error("spool write failed for SOP %s: %s", sop_uid, exc)
            return StoreOutcome(StoreStatus.OUT_OF_RESOURCES, final, error=str(exc))
        return StoreOutcome(StoreStatus.STORED, final)

    @staticmethod
    def _write_all(fd: int, chunks: list[bytes | memoryview | FileSlice]) -> None:
        run: list[bytes | memoryview] = []
        for chunk in chunks:
            if isinstance(chunk, FileSlice):
                Spool._write_buffers(fd, run)
                run = []
                _copy_range(chunk, fd)
            else:
                run.append(chunk)
        Spool._write_buffers(fd, run)

    @staticmethod
    def _write_buffers(fd: int, chunks: list[bytes | memoryview]) -> None:
        views = [memoryview(c) for c in chunks if len(c)]
        while views:
            written = os.writev(fd, views)
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]

    def record_origin(self, study_uid: str, called_ae: str | None, calling_ae: str | None,
                      origin: str = "dimse") -> None:
        """Remember (once per process) who sent to this study and how; durable before the instance."""
        key = (safe_name(study_uid), called_ae, calling_ae, origin)
        if key in self._known_origins:
            return
        directory = self.study_dir(study_uid)
        # DIMSE origins keep their original file name (spools written before HTTP origins existed).
        ident = f"{called_ae}\\{calling_ae}" + ("" if origin == "dimse" else f"\\{origin}")
        digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
        target = directory / f".origin-{digest}.json"
        if not target.exists():
            self._ensure_dir(directory)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
            with open(tmp, "w") as f:
                json.dump({"called_ae": called_ae, "calling_ae": calling_ae, "origin": origin}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(directory)
        with self._lock:
            self._known_origins.add(key)

    def claim_receiving(self) -> ReceivingClaim:
        """Become the one process receiving into this spool, or raise SpoolInUse naming the holder."""
        path = self.root / RECEIVING_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SpoolInUse(f"spool {self.root} is already receiving for {holder}: one node per spool") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return ReceivingClaim(fd)

    # reading -----------------------------------------------------------------------------
    def remove_stale_temp_files(self) -> int:
        """Temp files left by a crash are never acknowledged instances: delete them at start (only the
        holder of `claim_receiving()` may: a temp file of a live receiver is a receipt under way)."""
        removed = 0
        for tmp in self.root.rglob(f"*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
        return removed

    def instances(self, study_uid: str) -> list[Path]:
        return sorted(self.study_dir(study_uid).glob("*/*.dcm"))

    def origins(self, study_uid: str) -> list[dict[str, str | None]]:
        out: list[dict[str, str | None]] = []
        for f in sorted(self.study_dir(study_uid).glob(".origin-*.json")):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(f.read_text())
                out.append({"called_ae": data.get("called_ae"), "calling_ae": data.get("calling_ae"),
                            "origin": data.get("origin") or "dimse"})
        return out

    def iter_studies(self) -> Iterator[SpooledStudy]:
        if not self.root.exists():
            return
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                yield SpooledStudy(
                    study_uid=entry.name,
                    path=entry,
                    instances=sorted(entry.glob("*/*.dcm")),
                    origins=self.origins(entry.name),
                )
