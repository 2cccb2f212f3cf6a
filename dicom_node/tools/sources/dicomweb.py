"""`x2x batch --from-dicomweb URL`: QIDO-RS search, WADO-RS retrieve, STOW-RS store back (dicomweb-client).

One `DICOMwebClient` (with its own HTTP session) per retrieval running at once, borrowed from a pool
(base.ConnectionPool) and kept alive between requests. Credentials (bearer token or basic auth) live in
the session only; messages name the archive by its URL with any user:password@ part removed, never a
secret.

Transfer: responses are asked for without HTTP compression (`Accept-Encoding: identity`) unless
`compression`: radiograph pixel data barely compresses (7.2 -> 6.4 MB for the chest CR) and gzip is the
server's CPU time — measured with Orthanc 1.10 on one machine, a 7 MB WADO-RS instance took 1.0 s
gzipped and 0.13 s plain. Over a slow WAN link `--http-compression` may still pay.

Paging: QIDO results are requested `limit`/`offset` page by page. (Orthanc 1.10's DICOMweb plugin
ignores `offset` without `limit` when filtering on ModalitiesInStudy, so dicomweb-client's
`get_remaining` loops forever there; a page that brings no new UID also ends the search.)
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

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
    import requests
    from dicomweb_client.api import DICOMwebClient

    from dicom_node.send import SendReport

PAGE_SIZE = 500
MAX_PAGES = 10_000
# QIDO return keys beyond each level's defaults, by tag (what `precheck` and the drill-down read).
_FIELDS = {
    "study": ("0020000D",),
    "series": ("0020000D", "0020000E", "00080060", "0008103E", "00180015"),
    "instance": ("0020000D", "0020000E", "00080018", "00080016", "00080060", "0008103E", "00180015"),
}
_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
         "SOPClassUID": "00080016", "Modality": "00080060", "SeriesDescription": "0008103E",
         "BodyPartExamined": "00180015"}
_UNIQUE = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}


@dataclass(frozen=True)
class HttpAuth:
    token: str | None = None  # bearer
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        kind = "bearer" if self.token else ("basic" if self.username else "none")
        return f"HttpAuth({kind})"

    def session(self) -> requests.Session:
        import requests

        session = requests.Session()
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username:
            session.auth = (self.username, self.password or "")
        return session


def redact(url: str) -> str:
    """The URL without user:password@ (safe for messages and logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _value(record: dict[str, Any], tag: str) -> str:
    values = (record.get(tag) or {}).get("Value") or [""]
    value = values[0]
    if isinstance(value, dict):  # PN
        value = value.get("Alphabetic", "")
    return str(value)


def _flat(record: dict[str, Any]) -> Record:
    return {keyword: _value(record, tag) for keyword, tag in _TAGS.items()}


class DicomwebSource:
    kind = "dicomweb"

    def __init__(self, url: str, query: Query, *, auth: HttpAuth | None = None, timeout: float = 60.0,
                 limit: int | None = None, compression: bool = False):
        if urlsplit(url).scheme not in ("http", "https"):
            raise SourceError(f"--from-dicomweb: expected an http(s) URL, got {redact(url)!r}")
        self.url = url.rstrip("/")
        self.query = query
        self.auth = auth or HttpAuth()
        self.timeout = timeout
        self.limit = limit
        self.compression = compression
        # (client, session) pairs: a DICOMwebClient modifies its session, so each has its own
        self._clients: ConnectionPool[tuple[DICOMwebClient, requests.Session]] = ConnectionPool(
            self._new_client, lambda pair: pair[1].close())

    def describe(self) -> str:
        return f"DICOMweb archive {redact(self.url)} ({self.query.describe()})"

    # clients and errors -------------------------------------------------------------------
    def _new_client(self) -> tuple[DICOMwebClient, requests.Session]:
        from dicomweb_client.api import DICOMwebClient

        session = self.auth.session()
        if not self.compression:
            session.headers["Accept-Encoding"] = "identity"
        # chunk_size: send STOW bodies in one piece (not every server takes chunked uploads)
        client = DICOMwebClient(self.url, session=session, timeout=self.timeout, chunk_size=1 << 30)
        client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=200)
        return client, session

    @contextlib.contextmanager
    def client(self) -> Iterator[DICOMwebClient]:
        with self._clients.borrow() as (client, _):
            yield client

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Archive-wide failures -> SourceUnavailable; an item's own HTTP error -> RuntimeError."""
        import requests

        where = redact(self.url)
        try:
            yield
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                raise SourceUnavailable(f"{where} refused the {what} with HTTP {code}: check --token or "
                                        "--user/--password") from None
            raise RuntimeError(f"{what}: HTTP {code} from {where}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise SourceUnavailable(f"cannot reach the DICOMweb archive {where} ({what}): "
                                    f"{type(exc).__name__}") from None
        except ValueError as exc:  # a body that is not DICOM JSON / multipart
            raise RuntimeError(f"{what}: unexpected response from {where}: {str(exc)[:200]}") from None

    # query ---------------------------------------------------------------------------------
    def _search(self, level: str, call: Callable[[DICOMwebClient], Callable[..., list[dict[str, Any]]]],
                filters: dict[str, str]) -> list[Record]:
        out: list[Record] = []
        seen: set[str] = set()
        for page in range(MAX_PAGES):
            with self._errors("QIDO-RS search"), self.client() as client:
                batch = call(client)(search_filters=dict(filters), fields=list(_FIELDS[level]), limit=PAGE_SIZE,
                                     offset=page * PAGE_SIZE)
            new = [r for r in batch if _value(r, _UNIQUE[level]) not in seen]
            seen.update(_value(r, _UNIQUE[level]) for r in new)
            out += [_flat(r) for r in new]
            if len(batch) < PAGE_SIZE or not new:
                break
        return out

    def studies(self, filters: dict[str, str]) -> list[Record]:
        return self._search("study", lambda c: c.search_for_studies, filters)

    def series(self, study_uid: str | None, filters: dict[str, str]) -> list[Record]:
        return self._search("series", lambda c: functools.partial(c.search_for_series, study_uid), filters)

    def instances(self, study_uid: str | None, series_uid: str | None, filters: dict[str, str]) -> list[Record]:
        return self._search("instance", lambda c: functools.partial(c.search_for_instances, study_uid, series_uid),
                            filters)

    def plan(self, instructions: Instructions) -> list[BatchItem]:
        try:
            refs = expand(self.query, self, limit=self.limit)
        except RuntimeError as exc:
            raise SourceError(str(exc)) from None
        if not refs:
            raise SourceError(f"the query matched no instance in {self.describe()}")
        return items_for(refs, instructions)

    # retrieve / store ----------------------------------------------------------------------
    def fetch(self, item: BatchItem) -> Prepared:
        ref = item.ref
        started = time.perf_counter()
        with self._errors("WADO-RS retrieve"), self.client() as client:
            ds = client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid)
        return prepare_dataset(ds, seconds=time.perf_counter() - started)

    def store_back(self, files: Sequence[Path]) -> SendReport:
        import pydicom

        from dicom_node.send import SendReport

        started = time.perf_counter()
        report = SendReport(destination=f"source archive ({redact(self.url)})")
        datasets = [pydicom.dcmread(p) for p in files]
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        try:
            with self._errors("STOW-RS store"), self.client() as client:
                response = client.store_instances(datasets)
        except (SourceUnavailable, RuntimeError) as exc:
            report.failed = dict.fromkeys(uids, str(exc))
            report.seconds = time.perf_counter() - started
            return report
        failed = {str(i.get("ReferencedSOPInstanceUID", "?")): f"STOW-RS failure reason {i.get('FailureReason', '?')}"
                  for i in response.get("FailedSOPSequence", [])}
        report.failed = {uid: failed[uid] for uid in uids if uid in failed}
        report.sent = [uid for uid in uids if uid not in failed]
        report.seconds = time.perf_counter() - started
        return report

    def close(self) -> None:
        self._clients.close()
