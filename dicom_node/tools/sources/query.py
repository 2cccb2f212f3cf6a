"""The archive query of `x2x batch --from-dicomweb/--from-pacs`, the same for QIDO-RS and C-FIND.

`--query KEY=VALUE` (DICOM keywords, e.g. `Modality=CR`, `StudyDate=20240101-20240131`,
`AccessionNumber=A123`) matched at `--level` (study | series | instance), optionally within the studies
listed in `--study-uids FILE` (one Study Instance UID per line). Every match is expanded down to its
instances (study -> series -> instances), which are the batch's items. At study level `Modality` is
sent as ModalitiesInStudy and also keeps only that modality's series of a matching study.

An archive is a `Finder` (three searches returning flat keyword -> value records); `expand` drives it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dicom_node.tools.sources.base import BatchItem, Instructions

LEVELS = ("study", "series", "instance")
MAX_VALUE_CHARS = 256
MAX_STUDY_UIDS = 100_000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Attributes whose matching belongs to the hierarchical structure, not to a filter.
_RESERVED = {"QueryRetrieveLevel", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}

Record = dict[str, str]  # DICOM keyword -> first value ('' when absent)


class Finder(Protocol):
    """An archive's three searches; None for an upper UID means "any" (a relational search)."""

    def studies(self, filters: dict[str, str]) -> list[Record]: ...

    def series(self, study_uid: str | None, filters: dict[str, str]) -> list[Record]: ...

    def instances(self, study_uid: str | None, series_uid: str | None, filters: dict[str, str]) -> list[Record]: ...


@dataclass(frozen=True)
class Query:
    level: str = "study"
    filters: dict[str, str] = field(default_factory=dict)
    study_uids: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.filters.items()]
        if self.study_uids:
            parts.append(f"{len(self.study_uids)} listed study UID(s)")
        return f"{self.level} level" + (f", {', '.join(parts)}" if parts else ", no filter")


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str = ""
    modality: str = ""
    body_part: str = ""
    series_description: str = ""

    @property
    def label(self) -> str:
        return f"{self.study_uid}/{self.series_uid}/{self.sop_uid}"


def _keyword(key: str) -> str:
    from pydicom.datadict import dictionary_keyword, keyword_for_tag, tag_for_keyword

    key = key.strip()
    if re.fullmatch(r"\(?[0-9A-Fa-f]{4},?[0-9A-Fa-f]{4}\)?", key):
        name = keyword_for_tag(int(re.sub(r"[(),]", "", key), 16))
        if not name:
            raise ValueError(f"--query: unknown tag {key}")
        return name
    found = tag_for_keyword(key)
    if found is None:
        raise ValueError(f"--query: {key!r} is not a DICOM keyword (e.g. Modality, StudyDate, AccessionNumber)")
    return str(dictionary_keyword(found))


def parse_query(pairs: Iterable[str], *, level: str = "study", study_uids_file: Path | None = None) -> Query:
    """`KEY=VALUE` strings -> Query; ValueError with a message for the user on anything malformed."""
    if level not in LEVELS:
        raise ValueError(f"--level must be one of {', '.join(LEVELS)}")
    filters: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--query: expected KEY=VALUE, got {pair!r}")
        keyword = _keyword(key)
        value = value.strip()
        if keyword in _RESERVED:
            raise ValueError(f"--query: {keyword} is set by the query's structure; use --study-uids or --level")
        if len(value) > MAX_VALUE_CHARS or any(ord(c) < 32 for c in value):
            raise ValueError(f"--query {keyword}: value too long or with control characters")
        filters[keyword] = value
    uids = read_study_uids(study_uids_file) if study_uids_file is not None else ()
    return Query(level=level, filters=filters, study_uids=uids)


def read_study_uids(path: Path) -> tuple[str, ...]:
    """One Study Instance UID per line (blank lines and # comments ignored), de-duplicated in order."""
    out: dict[str, None] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            uid = line.split("#", 1)[0].strip().strip(",")
            if not uid:
                continue
            if len(uid) > 64 or not _UID.match(uid):
                raise ValueError(f"{path}:{number}: not a UID: {uid[:70]!r}")
            out[uid] = None
            if len(out) > MAX_STUDY_UIDS:
                raise ValueError(f"{path}: more than {MAX_STUDY_UIDS} study UIDs; split the list")
    if not out:
        raise ValueError(f"{path}: no Study Instance UID in the file")
    return tuple(out)


def _series_filters(query: Query) -> dict[str, str]:
    modality = query.filters.get("Modality")
    return {"Modality": modality} if modality else {}


def expand(query: Query, finder: Finder, *, limit: int | None = None) -> list[InstanceRef]:
    """Every instance the query matches, in the archive's order, each once (at most `limit`)."""
    refs: dict[str, InstanceRef] = {}

    def add_instances(study: str | None, series: Record | None, filters: dict[str, str]) -> bool:
        series_uid = series.get("SeriesInstanceUID") if series else None
        for rec in finder.instances(study, series_uid or None, filters):
            ref = InstanceRef(
                study_uid=rec.get("StudyInstanceUID") or study or "",
                series_uid=rec.get("SeriesInstanceUID") or series_uid or "",
                sop_uid=rec.get("SOPInstanceUID", ""),
                sop_class=rec.get("SOPClassUID", ""),
                modality=rec.get("Modality") or (series or {}).get("Modality", ""),
                body_part=rec.get("BodyPartExamined") or (series or {}).get("BodyPartExamined", ""),
                series_description=rec.get("SeriesDescription") or (series or {}).get("SeriesDescription", ""),
            )
            if ref.sop_uid and ref.study_uid and ref.series_uid:
                refs.setdefault(ref.sop_uid, ref)
            if limit is not None and len(refs) >= limit:
                return False
        return True

    def add_series(study: str | None, filters: dict[str, str]) -> bool:
        for series in finder.series(study, filters):
            if not add_instances(series.get("StudyInstanceUID") or study, series, {}):
                return False
        return True

    scopes: list[str | None] = list(query.study_uids) or [None]
    for scope in scopes:
        if query.level == "study":
            filters = dict(query.filters)
            if "Modality" in filters:
                filters["ModalitiesInStudy"] = filters.pop("Modality")
            if scope is not None:
                filters["StudyInstanceUID"] = scope
            for study in finder.studies(filters):
                uid = study.get("StudyInstanceUID")
                if uid and not add_series(uid, _series_filters(query)):
                    return list(refs.values())
        elif query.level == "series":
            if not add_series(scope, dict(query.filters)):
                break
        elif not add_instances(scope, None, dict(query.filters)):
            break
    return list(refs.values())


def precheck(ref: InstanceRef) -> str | None:
    """A skip reason that the query's own attributes already give (no retrieval needed), else None."""
    from pydicom.dataset import Dataset

    from dicom_node.studies.eligibility import skip_reason

    if ref.series_description.upper().startswith("X2X "):
        return "synthetic X2X output series: outputs are never edited again"
    if not ref.modality and not ref.sop_class:
        return None  # nothing known yet: decided on the retrieved instance
    stub = Dataset()
    for keyword, value in (("Modality", ref.modality), ("SOPClassUID", ref.sop_class),
                           ("BodyPartExamined", ref.body_part)):
        if value:
            setattr(stub, keyword, value)
    return skip_reason(stub, has_pixel_data=True)


def items_for(refs: Iterable[InstanceRef], instructions: Instructions) -> list[BatchItem]:
    """Instance refs -> batch items (one per instruction the CSV gives; `sop_instance_uid` or
    `study_instance_uid` select), keyed by SOP Instance UID."""
    items: list[BatchItem] = []
    for ref in refs:
        wanted = instructions.lookup(ref.sop_uid, ref.study_uid)
        reason = precheck(ref)
        for text, seed in wanted if wanted is not None else [("", instructions.seed)]:  # "": recorded as skipped
            items.append(BatchItem(ref.label, text, seed, ref=ref, key_basis=f"sop:{ref.sop_uid}", sop_uid=ref.sop_uid,
                                   study_uid=ref.study_uid, precheck=reason))
    return items
