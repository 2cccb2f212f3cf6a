"""`x2x batch --from-pacs AE@HOST:PORT`: C-FIND (Study Root), then per instance C-GET (default) or C-MOVE
to a storage SCP the batch runs itself (move_scp.py), with pynetdicom; results back by C-STORE.

One association per retrieval running at once, borrowed from a pool and reused (C-GET: the retrieve
model plus the storage classes the plan found, proposed with the SCP role so the PACS's C-STOREs come
back over it; C-MOVE: the move model).
An association that cannot be established stops the run (SourceUnavailable: unreachable, or refused
with the PACS's reason); a failure within one (a status, an abort) fails that item only, and the next
item opens a fresh association.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.tools.sources.base import (
    BatchItem,
    ConnectionPool,
    Instructions,
    Prepared,
    SourceError,
    SourceUnavailable,
    prepare_dataset,
)
from dicom_node.tools.sources.query import Query, Record, expand, items_for

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicom_node.send import SendReport
    from dicom_node.tools.sources.move_scp import MoveDestination

FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
MAX_GET_STORAGE_CONTEXTS = 100  # 128 presentation contexts at most in one association
_RETURN_KEYS = {
    "STUDY": ("StudyInstanceUID", "StudyDate", "ModalitiesInStudy"),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"),
}
_PENDING = {0xFF00, 0xFF01}
_SUCCESS_OR_WARNING = {0x0000, 0xB000}


def parse_peer(text: str) -> tuple[str, str, int]:
    """'AE@host:port' -> (AE, host, port)."""
    ae, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not ae or not host or not port.isdigit() or not 0 < int(port) < 65536 or len(ae) > 16:
        raise ValueError(f"expected AE@host:port, got {text!r}")
    return ae, host, int(port)


def _rejection(assoc: Any) -> str:
    primitive = getattr(assoc.acceptor, "primitive", None)
    parts = [getattr(primitive, name, None) for name in ("result_str", "source_str", "reason_str")]
    return ", ".join(str(p) for p in parts if p) or "no reason given"


class PacsSource:
    kind = "pacs"

    def __init__(self, peer: str, query: Query, *, calling_ae: str, retrieve: str = "get",
                 move_to: MoveDestination | None = None, timeout: float = 60.0, limit: int | None = None):
        try:
            self.ae_title, self.host, self.port = parse_peer(peer)
        except ValueError as exc:
            raise SourceError(f"--from-pacs: {exc}") from None
        if retrieve not in ("get", "move"):
            raise SourceError("--retrieve must be get or move")
        if retrieve == "move" and move_to is None:
            raise SourceError("C-MOVE needs a move destination")
        self.query, self.calling_ae, self.retrieve, self.move_to = query, calling_ae, retrieve, move_to
        self.timeout, self.limit = timeout, limit
        self.sop_classes: set[str] = set()
        # one association per retrieval running at once (and one for C-FIND), reused between requests
        self._fetchers: ConnectionPool[tuple[Any, list[Dataset]]] = ConnectionPool(
            self._fetch_association, lambda pair: _release(pair[0]), lambda pair: _abort(pair[0]),
            alive=lambda pair: bool(pair[0].is_established))
        self._finders: ConnectionPool[Any] = ConnectionPool(self._find_association, _release, _abort,
                                                            alive=lambda assoc: bool(assoc.is_established))

    @property
    def peer(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def describe(self) -> str:
        how = "C-GET" if self.retrieve == "get" else f"C-MOVE to {self.move_to.ae_title if self.move_to else '?'}"
        return f"PACS {self.peer} (C-FIND {self.query.describe()}; {how})"

    # associations ----------------------------------------------------------------------------
    def _associate(self, contexts: list[Any], **kwargs: Any) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for attempt in range(2):
            try:
                assoc = ae.associate(self.host, self.port, ae_title=self.ae_title, contexts=contexts, **kwargs)
            except (OSError, ValueError) as exc:
                raise SourceUnavailable(f"cannot open an association to {self.peer}: {exc}") from None
            if assoc.is_rejected:
                raise SourceUnavailable(f"association refused by {self.peer} (calling AE {self.calling_ae}): "
                                        f"{_rejection(assoc)}")
            if assoc.is_established:
                break
            # Not established and not rejected: unreachable, or (rarely) the peer closed the socket right
            # after its A-ASSOCIATE-RJ before pynetdicom read it. Say which; try once more if reachable.
            try:
                socket.create_connection((self.host, self.port), timeout=min(self.timeout, 10.0)).close()
            except OSError as exc:
                raise SourceUnavailable(f"cannot reach the PACS {self.peer}: "
                                        f"{exc.strerror or type(exc).__name__}") from None
            if attempt:
                raise SourceUnavailable(f"the PACS {self.peer} accepts connections but no association was "
                                        "established (aborted or timed out)")
        return assoc

    def _find_association(self) -> Any:
        from pynetdicom import build_context

        return self._associate([build_context(FIND)])

    def _fetch_association(self) -> tuple[Any, list[Dataset]]:
        """A new retrieve association and the list its C-STORE handler fills (C-GET)."""
        from pynetdicom import ALL_TRANSFER_SYNTAXES, build_context, build_role, evt

        from dicom_node.studies.eligibility import CR_DX_SOP_CLASSES

        received: list[Dataset] = []
        if self.retrieve == "move":
            assoc = self._associate([build_context(MOVE)])
        else:
            classes = sorted(CR_DX_SOP_CLASSES | self.sop_classes)[:MAX_GET_STORAGE_CONTEXTS]

            def on_store(event: Any) -> int:
                if len(received) < 4:  # one instance is asked for at a time; never hoard more
                    ds = event.dataset
                    ds.file_meta = event.file_meta
                    received.append(ds)
                return 0x0000

            assoc = self._associate([build_context(GET), *(build_context(c, ALL_TRANSFER_SYNTAXES) for c in classes)],
                                    ext_neg=[build_role(c, scp_role=True) for c in classes],
                                    evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return assoc, received

    # query -----------------------------------------------------------------------------------
    def _find(self, level: str, keys: dict[str, str]) -> list[Record]:
        from pydicom.dataset import Dataset

        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        for keyword in _RETURN_KEYS[level]:
            setattr(identifier, keyword, "")
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        out: list[Record] = []
        final = None
        with self._finders.borrow() as assoc:
            for status, found in assoc.send_c_find(identifier, FIND):
                final = int(status.Status) if status and "Status" in status else None
                if final in _PENDING and found is not None:
                    out.append({k: str(found.get(k, "") or "") for k in (*_RETURN_KEYS[level], *keys)})
            if final is None:
                assoc.abort()  # dropped from the pool by the error below
        if final is None:
            raise SourceError(f"C-FIND at {level} level: {self.peer} aborted the association or sent no response "
                              f"(is calling AE {self.calling_ae} allowed to query?)")
        if final not in _SUCCESS_OR_WARNING:
            raise SourceError(f"C-FIND at {level} level: {self.peer} answered status 0x{final:04X}")
        return out

    def studies(self, filters: dict[str, str]) -> list[Record]:
        return self._find("STUDY", filters)

    def series(self, study_uid: str | None, filters: dict[str, str]) -> list[Record]:
        return self._find("SERIES", {**filters, **({"StudyInstanceUID": study_uid} if study_uid else {})})

    def instances(self, study_uid: str | None, series_uid: str | None, filters: dict[str, str]) -> list[Record]:
        keys = dict(filters)
        if study_uid:
            keys["StudyInstanceUID"] = study_uid
        if series_uid:
            keys["SeriesInstanceUID"] = series_uid
        return self._find("IMAGE", keys)

    def plan(self, instructions: Instructions) -> list[BatchItem]:
        try:
            refs = expand(self.query, self, limit=self.limit)
        finally:
            self._finders.close()
        if not refs:
            raise SourceError(f"the query matched no instance in {self.describe()}")
        self.sop_classes = {r.sop_class for r in refs if r.sop_class}
        return items_for(refs, instructions)

    # retrieve / store ------------------------------------------------------------------------
    def fetch(self, item: BatchItem) -> Prepared:
        from pydicom.dataset import Dataset

        ref = item.ref
        started = time.perf_counter()
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID, identifier.SeriesInstanceUID = ref.study_uid, ref.series_uid
        identifier.SOPInstanceUID = ref.sop_uid
        mover = self.move_to if self.retrieve == "move" else None
        what = "C-MOVE" if mover is not None else "C-GET"
        for attempt in range(2):
            try:
                final, got = self._request(identifier, ref.sop_uid, mover)
                break
            except _Broken as exc:  # a pooled association the PACS had closed: once more on a fresh one
                if attempt:
                    raise RuntimeError(f"{what}: {self.peer} {exc}") from None
        if mover is None:
            ds = got
        else:  # the C-STORE sub-operations arrive on the SCP's own associations, before the final response
            ds = mover.take(ref.sop_uid, timeout=self.timeout if final in _SUCCESS_OR_WARNING else 0)
            if final == 0xA801:
                raise SourceUnavailable(f"C-MOVE: {self.peer} does not know the move destination {mover.ae_title}: "
                                        "add it to the PACS's configuration")
        if ds is None:
            hint = f" (does {self.peer} know {mover.ae_title} at this host's port {mover.port}?)" if mover else ""
            raise RuntimeError(f"{what}: status 0x{final:04X} and no instance arrived{hint}")
        return prepare_dataset(ds, seconds=time.perf_counter() - started)

    def _request(self, identifier: Dataset, sop_uid: str, mover: MoveDestination | None) -> tuple[int, Dataset | None]:
        """One C-GET / C-MOVE on a pooled association: (final status, the instance if C-GET brought it)."""
        with self._fetchers.borrow() as (assoc, received):
            received.clear()
            try:
                if mover is not None:
                    mover.expect(sop_uid)
                    responses = assoc.send_c_move(identifier, mover.ae_title, MOVE)
                else:
                    responses = assoc.send_c_get(identifier, GET)
                final = None
                for status, _ in responses:
                    final = int(status.Status) if status and "Status" in status else None
            except RuntimeError as exc:  # pynetdicom: the association is no longer established
                raise _Broken(str(exc)) from None
            if final is None:  # aborted or timed out: the association is dropped (borrow discards it)
                if mover is not None:
                    mover.take(sop_uid, timeout=0)
                raise _Broken("aborted the association or sent no final response")
            got = received[0] if received else None
            received.clear()
        return final, got

    def store_back(self, files: Sequence[Path]) -> SendReport:
        from dicom_node.config import CStoreDestination
        from dicom_node.send import get_sender

        dest = CStoreDestination(type="cstore", ae_title=self.ae_title, host=self.host, port=self.port)
        return get_sender(dest, name=f"source PACS {self.peer}", calling_ae=self.calling_ae).send(list(files))

    def close(self) -> None:
        self._finders.close()
        self._fetchers.close()


class _Broken(Exception):
    """The association failed under a request (not the PACS's answer to it)."""


def _release(assoc: Any) -> None:
    if assoc.is_established:
        assoc.release()


def _abort(assoc: Any) -> None:
    if assoc.is_established:
        assoc.abort()
