"""`x2x batch`: edit every eligible input of a source (tools/sources/: a folder tree of DICOM or PNG/JPG
files, a MIMIC-EDIT-INSTRUCTION table, a DICOMweb archive, a PACS) and record one manifest row per item.

For each (input, instruction) item: DICOM inputs give the five DICOM objects (same encoder and
deterministic UIDs as a node job) + PNG previews + result.json in `<out>/<sop uid>-<key8>/`, optionally
stored to the source archive and/or destinations; image inputs give the counterfactual, the guidance
map and mask as full-size files. One row per item goes to `<out>/manifest.csv` (fsync per row). A rerun
reads the manifest and skips every item that already has a row (done, skipped or failed; failed ones
too unless `retry_failed`) before fetching anything, so an interrupted run resumes where it stopped
without duplicates; an item interrupted half way has no row and is redone (its writes are atomic and
deterministic, and a PACS de-duplicates the resent UIDs).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.tools.sources.base import BatchItem, Prepared, Selector, Skip, Source, SourceUnavailable
from dicom_node.tools.sources.pacs import parse_peer
from editor.append_table import AppendOnlyTable

if TYPE_CHECKING:
    from dicom_node.send import SendReport
    from editor import Editor, EditParams

__all__ = ["BatchRunner", "BatchSummary", "Manifest", "Store", "parse_peer", "read_instructions_csv", "run_batch"]

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
    "sent",  # "ok" (every store took every object) | "failed: <store names>" | "" (nothing to store)
    "study_uid",
    "fetch_seconds",  # retrieval + decoding (it overlaps the previous item's edit)
)
# Stop when this many retrievals in a row fail: the archive is refusing everything (e.g. a C-MOVE
# destination it does not know); rows so far are kept, a rerun with --retry-failed redoes them.
MAX_FAILED_FETCHES_IN_A_ROW = 10


class Manifest(AppendOnlyTable):
    """Append-only CSV; one fsync'ed row per finished item (editor.append_table)."""

    def __init__(self, out_dir: Path):
        super().__init__(out_dir / MANIFEST, COLUMNS, key="item_key")

    def finished_keys(self, *, retry_failed: bool = False) -> set[str]:
        """Keys not to redo: every row's, or (retry_failed) those whose last row is not 'failed'."""
        if not retry_failed:
            return set(self.done_keys)
        last = {row["item_key"]: row["status"] for row in self.rows}
        return {key for key, status in last.items() if status != "failed"}


def read_instructions_csv(path: Path) -> Selector:
    """CSV with columns `path` (relative to SRC), `sop_instance_uid` or `study_instance_uid`,
    `instruction`, optional `seed`. Returns selector -> [(instruction, seed)]; an input may get several."""
    selectors = ("path", "sop_instance_uid", "study_instance_uid")
    out: Selector = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if "instruction" not in cols or not cols & set(selectors):
            raise ValueError(f"{path}: needs an 'instruction' column and a 'path', 'sop_instance_uid' or "
                             "'study_instance_uid' column")
        for row in reader:
            selector = next((row[c].strip() for c in selectors if (row.get(c) or "").strip()), "")
            if not selector or not (row.get("instruction") or "").strip():
                continue
            seed = int(row["seed"]) if (row.get("seed") or "").strip() else None
            out.setdefault(selector, []).append((row["instruction"].strip(), seed))
    return out


@dataclass
class Store:
    """Somewhere the DICOM objects of each edit go: the source archive, a [destinations] entry, a peer."""

    name: str
    send: Callable[[list[Path]], SendReport]


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    already: int = 0  # rows found in the manifest from an earlier run
    retrieved: int = 0
    retrieve_seconds: float = 0.0
    interrupted: bool = False
    stopped: str | None = None  # why the run stopped early (the source became unavailable)
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)  # skip reasons
    failures: Counter[str] = field(default_factory=Counter)

    def count(self, row: dict[str, Any]) -> None:
        status = row["status"]
        setattr(self, status, getattr(self, status) + 1)
        if status == "skipped":
            self.reasons[str(row.get("reason") or "")] += 1
        elif status == "failed":
            self.failures[str(row.get("reason") or "")] += 1

    @property
    def counts(self) -> str:
        return f"edited {self.done}, skipped {self.skipped}, failed {self.failed}"


def _folder_name(uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", uid)[:100] or "item"


@dataclass
class BatchRunner:
    out_dir: Path
    editor_factory: Callable[[], Editor]
    params: EditParams
    settings: Any  # dicom_node.config.Settings
    stores: list[Store] = field(default_factory=list)
    _editor: Editor | None = None

    def editor(self) -> Editor:
        if self._editor is None:
            self._editor = self.editor_factory()
        return self._editor

    @staticmethod
    def base_row(item: BatchItem) -> dict[str, Any]:
        return {"item_key": item.key, "source_path": item.label, "instruction": item.instruction, "seed": item.seed,
                "source_uid": item.sop_uid, "study_uid": item.study_uid}

    def run_item(self, item: BatchItem, prepared: Prepared) -> dict[str, Any]:
        """Edit one fetched item, write its outputs, store them; returns its manifest row.

        The job key is known before editing, so complete outputs of an earlier attempt with the same key
        (a delivery that failed, an interruption after the files were written) are reused, not re-edited."""
        from dicom_node.edit_params import job_key
        from dicom_node.results import write_outputs
        from dicom_node.results.outputs import EDIT_OUTPUTS, NODE_OUTPUTS
        from editor import InstructionError, UnsupportedImageError, parse_instruction

        started = time.perf_counter()
        row = self.base_row(item) | {"source_uid": prepared.uid, "study_uid": prepared.study_uid or item.study_uid,
                                     "fetch_seconds": f"{prepared.seconds:.3f}"}
        try:
            prompt = parse_instruction(item.instruction).prompt  # what the editor will be given
            editor = self.editor()
        except InstructionError as exc:
            return row | {"status": "skipped", "reason": str(exc).splitlines()[0][:300]}
        except Exception as exc:  # e.g. the model cannot be loaded: said on every row, the run goes on
            return row | {"status": "failed", "reason": f"model: {type(exc).__name__}: {exc}"[:300]}
        key = job_key(prepared.uid, prompt, editor.model_hash, item.seed, self.params)
        folder = self.out_dir / f"{_folder_name(prepared.uid)}-{key[:8]}"
        is_dicom = prepared.dataset is not None
        earlier = earlier_outputs(folder, dicom=is_dicom, instruction=prompt, model_hash=editor.model_hash,
                                  seed=item.seed, params=self.params)
        if earlier is not None:
            paths, coverage = earlier
            reason = "outputs of an earlier attempt with the same job key reused"
        else:
            try:
                result = editor.edit(prepared.source, item.instruction, seed=item.seed, params=self.params)
            except (InstructionError, UnsupportedImageError) as exc:
                return row | {"status": "skipped", "reason": str(exc).splitlines()[0][:300]}
            except Exception as exc:  # one bad input must not stop a night-long batch
                log.warning("edit failed for %s: %s", item.label, exc, exc_info=True)
                return row | {"status": "failed", "reason": f"edit: {type(exc).__name__}: {exc}"[:300]}
            # DICOM inputs: the five objects + previews; images: full-size counterfactual + guidance maps.
            written = write_outputs(result, folder, source=prepared.source, source_ds=prepared.dataset, job_key=key,
                                    settings=self.settings, which=NODE_OUTPUTS if is_dicom else EDIT_OUTPUTS)
            paths, coverage, reason = written.all_paths, result.coverage, ""
        row |= {
            "status": "done",
            "instruction": prompt,
            "outputs": ";".join(p.relative_to(self.out_dir).as_posix() for p in paths),
            "coverage": f"{coverage:.6f}",
            "reason": reason,
        }
        if is_dicom and self.stores:
            failed_names, failures = self._store([p for p in paths if p.suffix == ".dcm"])
            row["sent"] = ("failed: " + ", ".join(failed_names))[:300] if failed_names else "ok"
            if failures:  # the files are on disk; --retry-failed stores them (same UIDs) without re-editing
                row |= {"status": "failed", "reason": ("store: " + "; ".join(failures))[:300]}
        row["seconds"] = f"{time.perf_counter() - started:.3f}"
        return row

    def _store(self, files: list[Path]) -> tuple[list[str], list[str]]:
        """(names of the stores that failed, their errors)."""
        failed_names: list[str] = []
        failures: list[str] = []
        for store in self.stores:
            try:
                report = store.send(files)
            except Exception as exc:  # noqa: BLE001 - a destination's bug must not lose the row
                report = None
                error = f"{type(exc).__name__}: {exc}"
            if report is not None and report.ok:
                continue
            if report is not None:
                error = report.error_summary()
            failed_names.append(store.name)
            failures.append(error[:200])
        return failed_names, failures


def earlier_outputs(folder: Path, *, dicom: bool, instruction: str, model_hash: str, seed: int,
                    params: EditParams) -> tuple[list[Path], float] | None:
    """(files, coverage) of a complete earlier edit with these settings (`instruction`: the prompt the
    editor was given) in `folder`, else None.

    Complete = result.json, and for a DICOM input the five objects (written last by write_outputs)."""
    from dicom_node.results import result_files
    from dicom_node.results.encode import FILE_NAMES, KINDS
    from dicom_node.results.outputs import ANALYSIS_NAMES, PREVIEW_NAMES

    summary_path = folder / "result.json"
    if not summary_path.is_file() or (dicom and result_files(folder) is None):
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        wanted = json.loads(json.dumps(params.to_dict(), default=str))
        same = (summary.get("prompt"), summary.get("model_hash"), summary.get("seed"), summary.get("params")) \
            == (instruction, model_hash, seed, wanted)
        coverage = float(summary["coverage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not same:
        return None
    files = [folder / FILE_NAMES[kind] for kind in KINDS] if dicom else []
    files += [folder / name for name in (*PREVIEW_NAMES, *ANALYSIS_NAMES) if (folder / name).is_file()]
    return [*files, summary_path], coverage


def run_batch(
    runner: BatchRunner,
    source: Source,
    todo: Sequence[BatchItem],
    manifest: Manifest,
    *,
    workers: int = 4,
    window: int = 8,
    on_row: Callable[[dict[str, Any], BatchSummary], None] | None = None,
    summary: BatchSummary | None = None,
) -> BatchSummary:
    """Fetch (bounded prefetch pool) and edit every item of `todo`, one fsync'ed manifest row each.

    Ctrl-C: KeyboardInterrupt propagates after the finished rows are safe (summary.interrupted is set).
    A source that becomes unavailable ends the run with `summary.stopped` (no row for that item)."""
    from dicom_node.tools.sources.prefetch import prefetched

    summary = summary or BatchSummary()
    started = time.perf_counter()
    failed_in_a_row = 0

    def needs_fetch(item: BatchItem) -> bool:
        return bool(item.instruction) and item.precheck is None

    stream = prefetched(todo, source.fetch, workers=workers, window=window, needs_fetch=needs_fetch)
    try:
        with contextlib.closing(stream):
            for item, future in stream:
                row = runner.base_row(item)
                if not item.instruction:
                    row |= {"status": "skipped", "reason": "no instruction for this input in the instructions CSV"}
                elif future is None:
                    row |= {"status": "skipped", "reason": item.precheck}
                else:
                    try:
                        prepared = future.result()
                    except Skip as exc:
                        row |= {"status": "skipped", "reason": str(exc)[:300]}
                        failed_in_a_row = 0
                    except SourceUnavailable as exc:
                        summary.stopped = str(exc)
                        break
                    except Exception as exc:  # this item's retrieval failed: a row says why
                        log.warning("retrieving %s failed: %s", item.label, exc)
                        row |= {"status": "failed", "reason": f"retrieve: {exc}"[:300]}
                        failed_in_a_row += 1
                    else:
                        failed_in_a_row = 0
                        summary.retrieved += 1
                        summary.retrieve_seconds += prepared.seconds
                        row = runner.run_item(item, prepared)
                manifest.append(row)
                summary.count(row)
                if on_row is not None:
                    on_row(row, summary)
                if failed_in_a_row >= MAX_FAILED_FETCHES_IN_A_ROW:
                    summary.stopped = (f"{failed_in_a_row} retrievals in a row failed (last: {row['reason']}); "
                                       "fix the archive side and rerun with --retry-failed")
                    break
    except KeyboardInterrupt:
        # The item in progress has no manifest row, so a rerun redoes it; finished rows are fsync'ed.
        summary.interrupted = True
        raise
    finally:
        summary.seconds += time.perf_counter() - started
    return summary
