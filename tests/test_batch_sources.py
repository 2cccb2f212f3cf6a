"""The parts of `x2x batch`'s sources that need no archive: query parsing, the drill-down over a Finder,
the bounded prefetch window, the manifest's resume rules, secrets kept out of text."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dicom_node.tools.batch import Manifest
from dicom_node.tools.sources.base import Instructions
from dicom_node.tools.sources.dicomweb import HttpAuth, redact
from dicom_node.tools.sources.prefetch import prefetched
from dicom_node.tools.sources.query import InstanceRef, Query, expand, items_for, parse_query, precheck


def test_parse_query_takes_keywords_and_tags_and_rejects_the_rest(tmp_path: Path) -> None:
    q = parse_query(["Modality=CR", "(0008,0020)=20240101-20240131", "00080050=A1"], level="series")
    assert q.filters == {"Modality": "CR", "StudyDate": "20240101-20240131", "AccessionNumber": "A1"}
    assert q.level == "series"
    for bad, says in (("Modalty=CR", "not a DICOM keyword"), ("Modality", "KEY=VALUE"),
                      ("StudyInstanceUID=1.2", "--study-uids"), ("PatientName=a\nb", "control characters"),
                      ("PatientName=" + "x" * 300, "too long")):
        with pytest.raises(ValueError, match=says):
            parse_query([bad])
    with pytest.raises(ValueError, match="--level"):
        parse_query([], level="patient")
    uids = tmp_path / "uids.txt"
    uids.write_text("# studies\n1.2.3\n\n1.2.4 # second\n1.2.3\n")
    assert parse_query([], study_uids_file=uids).study_uids == ("1.2.3", "1.2.4")
    uids.write_text("1.2.3\nnot-a-uid\n")
    with pytest.raises(ValueError, match=r"uids.txt:2: not a UID"):
        parse_query([], study_uids_file=uids)


class _Archive:
    """A Finder over an in-memory hierarchy, recording the searches it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, dict[str, str]]] = []
        self.data = {
            "S1": {"A": ("CR", ["i1", "i2"]), "B": ("MR", ["i3"])},
            "S2": {"C": ("CR", ["i4"])},
        }

    def studies(self, filters: dict[str, str]) -> list[dict[str, str]]:
        self.calls.append(("studies", None, filters))
        uid = filters.get("StudyInstanceUID")
        return [{"StudyInstanceUID": s} for s in self.data if uid in (None, s)]

    def series(self, study: str | None, filters: dict[str, str]) -> list[dict[str, str]]:
        self.calls.append(("series", study, filters))
        return [{"StudyInstanceUID": s, "SeriesInstanceUID": se, "Modality": m}
                for s, series in self.data.items() if study in (None, s)
                for se, (m, _) in series.items() if filters.get("Modality") in (None, m)]

    def instances(self, study: str | None, series: str | None, filters: dict[str, str]) -> list[dict[str, str]]:
        self.calls.append(("instances", (study, series), filters))
        return [{"StudyInstanceUID": s, "SeriesInstanceUID": se, "SOPInstanceUID": i, "SOPClassUID": ""}
                for s, ss in self.data.items() if study in (None, s)
                for se, (_, ids) in ss.items() if series in (None, se) for i in ids]


def test_expand_drills_down_and_keeps_only_the_asked_modality() -> None:
    archive = _Archive()
    refs = expand(Query(level="study", filters={"Modality": "CR"}), archive)
    assert [r.sop_uid for r in refs] == ["i1", "i2", "i4"]
    assert ("studies", None, {"ModalitiesInStudy": "CR"}) in archive.calls, "Modality -> ModalitiesInStudy"
    assert all(r.modality == "CR" for r in refs)
    refs = expand(Query(level="study", study_uids=("S2",)), _Archive())
    assert [r.sop_uid for r in refs] == ["i4"]
    assert [r.sop_uid for r in expand(Query(level="series", filters={"Modality": "MR"}), _Archive())] == ["i3"]
    assert [r.sop_uid for r in expand(Query(level="instance"), _Archive(), limit=2)] == ["i1", "i2"]


def test_precheck_and_items_for() -> None:
    mr = InstanceRef("S", "SE", "1", modality="MR")
    ours = InstanceRef("S", "SE", "2", modality="OT", series_description="X2X counterfactual: Add ...")
    unknown = InstanceRef("S", "SE", "3")
    cr = InstanceRef("S", "SE", "4", modality="CR", body_part="CHEST")
    assert "modality MR" in (precheck(mr) or "")
    assert "synthetic X2X output" in (precheck(ours) or "")
    assert precheck(unknown) is None and precheck(cr) is None
    per_input = {"4": [("Add the finding of edema.", 9)], "S": [("Remove the finding of edema.", None)]}
    items = items_for([cr, unknown], Instructions(seed=1, per_input=per_input))
    assert [(i.sop_uid, i.instruction, i.seed) for i in items] == [
        ("4", "Add the finding of edema.", 9), ("3", "Remove the finding of edema.", 1)], "SOP UID, then study UID"
    again = items_for([cr], Instructions(seed=1, per_input=per_input))
    assert again[0].key == items[0].key, "keys are stable across runs"


def test_prefetch_is_bounded_ordered_and_cancels_on_close() -> None:
    running = 0
    peak = 0
    started: list[int] = []
    lock = threading.Lock()

    def fetch(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            started.append(i)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i * 10

    stream = prefetched(range(40), fetch, workers=3, window=5, needs_fetch=lambda i: i % 7 != 0)
    got = []
    for i, future in stream:
        got.append((i, None if future is None else future.result()))
        assert len(started) <= len([g for g in got if g[1] is not None]) + 5, "never more than the window ahead"
        if i == 20:
            break
    stream.close()
    assert [g[0] for g in got] == list(range(21)), "in the items' order"
    assert all(v == (None if i % 7 == 0 else i * 10) for i, v in got)
    assert peak <= 3
    time.sleep(0.1)
    assert max(started) <= 20 + 5 + 3, "nothing fetched far past where the consumer stopped"


def test_manifest_resume_rules(tmp_path: Path) -> None:
    with Manifest(tmp_path) as m:
        m.append({"item_key": "a", "status": "done"})
        m.append({"item_key": "b", "status": "failed"})
        m.append({"item_key": "c", "status": "failed"})
        m.append({"item_key": "c", "status": "done"})  # retried later
    m = Manifest(tmp_path)
    assert m.finished_keys() == {"a", "b", "c"}
    assert m.finished_keys(retry_failed=True) == {"a", "c"}
    m.close()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.csv").write_text("item_key,source_path\nx,y\n")
    with pytest.raises(ValueError, match="other columns"):
        Manifest(tmp_path / "other")


def test_secrets_stay_out_of_text() -> None:
    assert redact("https://u:secret@pacs.example/dicom-web") == "https://pacs.example/dicom-web"
    assert redact("http://pacs:8042/dicom-web") == "http://pacs:8042/dicom-web"
    assert "s3cret" not in repr(HttpAuth(token="s3cret")) and "pw" not in repr(HttpAuth(username="u", password="pw"))
    session = HttpAuth(token="s3cret").session()
    assert session.headers["Authorization"] == "Bearer s3cret"
    assert HttpAuth(username="u", password="pw").session().auth == ("u", "pw")
