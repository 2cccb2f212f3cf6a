"""Build MIMIC-EDIT-INSTRUCTION from MIMIC-Diff-VQA difference answers and MIMIC-CXR-JPG.

Inputs (the real release formats; `.csv.gz` is read as well as `.csv`):

* questions — MIMIC-Diff-VQA `mimic_pair_questions.csv` (or a JSON list of the same records).
  Columns used: `study_id` (the main = current study), `ref_id` (the reference = past study),
  `question_type` ('difference', 'location', 'level', ...), `question`, `answer`; optional `split`,
  `subject_id`. Other columns (an unnamed index ...) are ignored. Ids may be written `50414267`,
  `50414267.0` or `s50414267`.
* metadata — MIMIC-CXR `mimic-cxr-2.0.0-metadata.csv`: `dicom_id`, `subject_id`, `study_id`,
  `ViewPosition` (PA, AP, LATERAL, LL ...).
* split file (optional when the questions carry `split`) — `mimic-cxr-2.0.0-split.csv`:
  `dicom_id`, `study_id`, `subject_id`, `split` (train / validate / test).
* jpg root — MIMIC-CXR-JPG: `files/p<first 2 digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg`.

Rules:

* Only 'difference' rows make samples; one sample group per (current, past) study pair (later
  duplicates are dropped as `duplicate_pair`).
* The answer parser (`parse_difference_answer`) reads the three sentence forms of MIMIC-Diff-VQA:
  "the main image has additional findings of A, B, and C than the reference image." (added),
  "the main image is missing the findings of D than the reference image." (removed),
  "the level of E has changed from small to moderate." (level change); "nothing has changed." means
  no difference. Finding phrases go through the editor's own grammar (`editor.instructions`, closed
  vocabulary of `editor.vocabulary`): a pair whose answer names any unknown finding (or an unknown
  level) is dropped whole and counted -- keeping the pair minus that finding would teach the model an
  instruction that leaves out part of the change it sees (label noise).
* v1: one instruction per operation: "Add the findings of A, B and C." / "Remove the finding of D." /
  "Change the level of E from small to moderate.". v2 (`v2=True`, the default, the research release's
  current form): one finding per instruction, with
  the location and severity the answer gives or, failing that, the 'location' / 'level' questions of
  the same study ("where in the image is the pleural effusion located?" -> "left lung, right lung";
  "what level is the pleural effusion?" -> "moderate"): the current study for added findings, the past
  study for removed ones. Written to the `location` (space-separated canonical words) and `severity`
  columns as well; `severity` is the finding's level where it is present (current image for add and
  change, i.e. the level it changed *to*; past image for remove).
* Images: frontal views only (ViewPosition PA, then AP); within a study the first existing JPG in the
  order (PA before AP, then dicom_id ascending), so the choice is deterministic.
* Split: the questions' `split` column when present, else the split file's split of the current image.

Drop reasons (counted in stats.json, pairs): no_past_study, duplicate_pair, unparsed_answer,
no_difference, unknown_finding (the answer names a finding outside the vocabulary; `unknown_findings`
counts the phrases, `pairs_dropped_by_unknown_finding` the pairs per phrase), unknown_level,
study_not_in_metadata, lateral_only, missing_image, no_split.

Images (optional): `<out>/images/<dicom_id>.png`, 8-bit grayscale at `image_size`² ("squash": the
whole image resized to a square, as the paper's 512x512 inputs; "pad": letterboxed; "crop": centre
crop of the shorter side).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from editor.instructions import (
    FILLER_WORDS,
    FindingSpec,
    InstructionError,
    ParsedInstruction,
    normalise_location,
    normalise_severity,
    parse_finding_phrase,
    parse_instruction,
)
from editor.training.format import INSTRUCTIONS_FILE, STATS_FILE, Sample, image_path, write_samples

FRONTAL_ORDER = ("PA", "AP")  # preferred first
DROP_REASONS = (
    "no_past_study", "duplicate_pair", "unparsed_answer", "no_difference", "unknown_finding",
    "unknown_level", "study_not_in_metadata", "lateral_only", "missing_image", "no_split",
)
Fit = Literal["squash", "pad", "crop"]


# --------------------------------------------------------------------------------------------------
# Reading the real files


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - returned to a with-block


def read_records(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV (.csv / .csv.gz) or records of a JSON list, as str -> str dicts."""
    path = Path(path)
    if path.suffix == ".json":
        for rec in json.loads(path.read_text()):
            yield {str(k): "" if v is None else str(v) for k, v in rec.items()}
        return
    with _open_text(path) as fh:
        yield from csv.DictReader(fh)


def norm_id(value: str | None) -> str:
    """'s50414267' / '50414267.0' / ' 50414267 ' -> '50414267'; '', 'nan', None -> ''."""
    text = (value or "").strip().lower()
    if text in ("", "nan", "none", "null"):
        return ""
    text = text.lstrip("sp")
    return text[:-2] if text.endswith(".0") else text


def _require(row: dict[str, str], columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)} (found {', '.join(row)})")


@dataclass(frozen=True)
class Image:
    dicom_id: str
    subject_id: str
    study_id: str
    view: str


def jpg_path(root: Path, img: Image) -> Path:
    return root / "files" / f"p{img.subject_id[:2]}" / f"p{img.subject_id}" / f"s{img.study_id}" / f"{img.dicom_id}.jpg"


def read_metadata(path: str | Path) -> dict[str, list[Image]]:
    """study_id -> its images (every view)."""
    studies: dict[str, list[Image]] = defaultdict(list)
    first = True
    for row in read_records(path):
        if first:
            _require(row, ("dicom_id", "subject_id", "study_id", "ViewPosition"), str(path))
            first = False
        img = Image(row["dicom_id"].strip(), norm_id(row["subject_id"]), norm_id(row["study_id"]),
                    (row["ViewPosition"] or "").strip().upper())
        studies[img.study_id].append(img)
    return dict(studies)


def read_split(path: str | Path) -> dict[str, str]:
    """dicom_id -> split."""
    out: dict[str, str] = {}
    first = True
    for row in read_records(path):
        if first:
            _require(row, ("dicom_id", "split"), str(path))
            first = False
        out[row["dicom_id"].strip()] = row["split"].strip()
    return out


# --------------------------------------------------------------------------------------------------
# The answer parser


@dataclass
class Difference:
    added: list[FindingSpec] = field(default_factory=list)
    removed: list[FindingSpec] = field(default_factory=list)
    changes: list[ParsedInstruction] = field(default_factory=list)
    unknown_findings: list[str] = field(default_factory=list)
    unknown_levels: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)  # sentences of no known form
    nothing_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changes)


_ADDED = re.compile(r"^the main image has (?:an |some )?additional findings? of (?P<list>.+?)"
                    r"(?: than the reference image)?$")
_REMOVED = re.compile(r"^the main image is missing (?:the |a )?findings? of (?P<list>.+?)"
                      r"(?: than the reference image)?$")
_LEVEL = re.compile(r"^the level of (?P<finding>.+?) has changed from (?P<levels>.+)$")
_NOTHING = re.compile(r"^nothing (?:has )?changed$")
_LIST = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")


def _sentences(answer: str) -> list[str]:
    text = re.sub(r"\s+", " ", answer.strip().lower())
    return [s.strip() for s in re.split(r"\.(?:\s+|$)", text) if s.strip()]


def _finding_list(text: str, diff: Difference) -> list[FindingSpec]:
    specs: list[FindingSpec] = []
    for phrase in _LIST.split(text):
        if not phrase.strip():
            continue
        try:
            spec = parse_finding_phrase(phrase)
        except InstructionError:
            diff.unknown_findings.append(phrase.strip())
            continue
        if spec.name not in {s.name for s in specs}:
            specs.append(spec)
    return specs


def parse_difference_answer(answer: str) -> Difference:
    """Parse one MIMIC-Diff-VQA difference answer (see the module docstring for the forms)."""
    diff = Difference()
    for sentence in _sentences(answer):
        if _NOTHING.match(sentence):
            diff.nothing_changed = True
        elif m := _ADDED.match(sentence):
            diff.added += _finding_list(m.group("list"), diff)
        elif m := _REMOVED.match(sentence):
            diff.removed += _finding_list(m.group("list"), diff)
        elif m := _LEVEL.match(sentence):
            finding = m.group("finding").strip()
            try:
                parse_finding_phrase(finding, allow_severity=False)
            except InstructionError:
                diff.unknown_findings.append(finding)
                continue
            try:
                diff.changes.append(parse_instruction(f"change the level of {finding} from {m.group('levels')}"))
            except InstructionError:
                diff.unknown_levels.append(m.group("levels").strip())
        else:
            diff.unparsed.append(sentence)
    return diff


# Single-image questions that carry v2 detail for one finding of one study.
_LOCATION_Q = re.compile(r"^where (?:in the image )?(?:is|are) the (?P<finding>.+?) located\??$")
_LEVEL_Q = re.compile(r"^(?:what level is the|what is the level of the?) (?P<finding>.+?)\??$")


def _location_words(answer: str) -> tuple[str, ...]:
    words = [w for w in re.split(r"[\s,;/]+", answer.strip().lower()) if w and w not in FILLER_WORDS
             and w not in ("and", "both")]
    keep: list[str] = []
    for w in words:
        try:
            normalise_location([w])
        except InstructionError:
            continue  # a word the grammar has no location for (e.g. 'costophrenic'): not a location
        keep.append(w)
    if "both" in answer.lower().split():
        keep.append("bilateral")
    try:
        return normalise_location(keep)
    except InstructionError:
        return ()  # contradictory (bilateral and one side): say nothing rather than guess


@dataclass
class StudyDetails:
    """v2 detail per (study_id, finding): location words and severity from single-image questions."""

    location: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    severity: dict[tuple[str, str], str] = field(default_factory=dict)

    def add_question(self, study: str, question: str, answer: str) -> None:
        q = re.sub(r"\s+", " ", question.strip().lower())
        if m := _LOCATION_Q.match(q):
            name = _single_finding(m.group("finding"))
            loc = _location_words(answer) if name else ()
            if name and loc:
                self.location.setdefault((study, name), loc)
        elif m := _LEVEL_Q.match(q):
            name = _single_finding(m.group("finding"))
            if name:
                with contextlib.suppress(InstructionError):  # an unknown level word: no severity
                    self.severity.setdefault((study, name), normalise_severity(answer.strip().rstrip(".")))

    def complete(self, study: str, spec: FindingSpec) -> FindingSpec:
        loc = spec.location or self.location.get((study, spec.name), ())
        sev = spec.severity or self.severity.get((study, spec.name))
        return FindingSpec(spec.name, loc, sev)


def _single_finding(phrase: str) -> str | None:
    try:
        return parse_finding_phrase(phrase).name
    except InstructionError:
        return None


# --------------------------------------------------------------------------------------------------
# The build


@dataclass
class BuildStats:
    input_rows: int = 0
    difference_rows: int = 0
    pairs_kept: int = 0
    rows_written: int = 0
    images_written: int = 0
    images_existing: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> pairs
    per_operation: Counter = field(default_factory=Counter)  # add/remove/change -> rows
    per_finding: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # op -> finding -> n
    per_split: Counter = field(default_factory=Counter)
    unknown_findings: Counter = field(default_factory=Counter)  # phrase -> occurrences (dropped)
    pairs_dropped_by_unknown_finding: Counter = field(default_factory=Counter)  # phrase -> pairs dropped
    unknown_levels: Counter = field(default_factory=Counter)
    unparsed_sentences: Counter = field(default_factory=Counter)
    v2: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_rows": self.input_rows,
            "difference_rows": self.difference_rows,
            "pairs_kept": self.pairs_kept,
            "rows_written": self.rows_written,
            "images_written": self.images_written,
            "images_existing": self.images_existing,
            "v2": self.v2,
            "dropped": {r: self.dropped.get(r, 0) for r in DROP_REASONS},
            "per_operation": dict(self.per_operation),
            "per_finding": {op: dict(sorted(c.items())) for op, c in sorted(self.per_finding.items())},
            "per_split": dict(self.per_split),
            "unknown_findings": dict(self.unknown_findings.most_common()),
            "pairs_dropped_by_unknown_finding": dict(self.pairs_dropped_by_unknown_finding.most_common()),
            "unknown_levels": dict(self.unknown_levels.most_common()),
            "unparsed_sentences": dict(self.unparsed_sentences.most_common(50)),
        }


def choose_frontal(images: list[Image], jpg_root: Path) -> tuple[Image | None, str | None]:
    """The study's frontal image (PA before AP, then dicom_id) whose JPG exists; else the drop reason."""
    frontal = sorted((i for i in images if i.view in FRONTAL_ORDER),
                     key=lambda i: (FRONTAL_ORDER.index(i.view), i.dicom_id))
    if not frontal:
        return None, "lateral_only"
    for img in frontal:
        if jpg_path(jpg_root, img).exists():
            return img, None
    return None, "missing_image"


def _instructions(diff: Difference, current: str, past: str, details: StudyDetails,
                  v2: bool) -> list[tuple[ParsedInstruction, str, str]]:
    """(instruction, location column, severity column) rows for one pair."""
    out: list[tuple[ParsedInstruction, str, str]] = []
    if not v2:
        names_add = [s.name for s in diff.added]
        names_rem = [s.name for s in diff.removed]
        if names_add:
            out.append((ParsedInstruction.add(names_add), "", ""))
        if names_rem:
            out.append((ParsedInstruction.remove(names_rem), "", ""))
        for ch in diff.changes:  # v1 drops any location the answer gave
            out.append((ParsedInstruction.change(ch.findings[0].name, str(ch.level_from), str(ch.level_to)), "", ""))
        return out
    groups: tuple[tuple[Literal["add", "remove"], list[FindingSpec], str], ...] = (
        ("add", diff.added, current), ("remove", diff.removed, past))
    for op, specs, study in groups:
        for spec in specs:
            full = details.complete(study, spec)
            out.append((ParsedInstruction(op, (full,)), " ".join(full.location), full.severity or ""))
    for ch in diff.changes:
        spec = details.complete(current, FindingSpec(ch.findings[0].name, ch.findings[0].location))
        parsed = ParsedInstruction("change", (spec,), ch.level_from, ch.level_to)
        out.append((parsed, " ".join(spec.location), str(ch.level_to)))
    return out


def build_dataset(
    questions: str | Path,
    metadata: str | Path,
    jpg_root: str | Path,
    out_dir: str | Path,
    *,
    split_file: str | Path | None = None,
    v2: bool = True,
    write_images: bool = False,
    image_size: int = 512,
    fit: Fit = "squash",
    workers: int = 4,
) -> BuildStats:
    """Write `<out_dir>/instructions.csv`, `stats.json` (and `images/`) ; returns the statistics."""
    jpg_root, out = Path(jpg_root), Path(out_dir)
    stats = BuildStats(v2=v2)
    studies = read_metadata(metadata)
    split_of = read_split(split_file) if split_file is not None else {}

    difference_rows: list[dict[str, str]] = []
    details = StudyDetails()
    first = True
    for row in read_records(questions):
        if first:
            _require(row, ("study_id", "ref_id", "question_type", "answer"), str(questions))
            first = False
        stats.input_rows += 1
        qtype = (row.get("question_type") or "").strip().lower()
        if qtype == "difference":
            difference_rows.append(row)
        elif v2 and qtype in ("location", "level"):
            details.add_question(norm_id(row["study_id"]), row.get("question") or "", row["answer"] or "")
    stats.difference_rows = len(difference_rows)
    if split_file is None and difference_rows and "split" not in difference_rows[0]:
        raise ValueError("no split: the questions have no 'split' column; pass the MIMIC-CXR split file")

    samples: list[Sample] = []
    needed: dict[str, Image] = {}
    seen: set[tuple[str, str]] = set()
    for row in difference_rows:
        current, past = norm_id(row["study_id"]), norm_id(row["ref_id"])
        if not past:
            stats.dropped["no_past_study"] += 1
            continue
        if (current, past) in seen:
            stats.dropped["duplicate_pair"] += 1
            continue
        seen.add((current, past))
        diff = parse_difference_answer(row["answer"] or "")
        reason: str | None
        stats.unknown_findings.update(diff.unknown_findings)
        stats.unknown_levels.update(diff.unknown_levels)
        stats.unparsed_sentences.update(diff.unparsed)
        reason = None
        if diff.unknown_findings:  # the whole pair: never an instruction that misses part of the change
            reason = "unknown_finding"
            stats.pairs_dropped_by_unknown_finding.update(set(diff.unknown_findings))
        elif diff.unknown_levels:
            reason = "unknown_level"
        elif diff.empty:
            reason = "no_difference" if diff.nothing_changed else "unparsed_answer"
        if reason is not None:
            stats.dropped[reason] += 1
            continue
        chosen: list[Image] = []
        reason = None
        for study in (current, past):
            if study not in studies:
                reason = "study_not_in_metadata"
                break
            img, why = choose_frontal(studies[study], jpg_root)
            if img is None:
                reason = why
                break
            chosen.append(img)
        if reason is not None:
            stats.dropped[reason] += 1
            continue
        cur_img, past_img = chosen
        split = (row.get("split") or "").strip() or split_of.get(cur_img.dicom_id, "")
        if not split:
            stats.dropped["no_split"] += 1
            continue
        stats.pairs_kept += 1
        needed[cur_img.dicom_id], needed[past_img.dicom_id] = cur_img, past_img
        for parsed, location, severity in _instructions(diff, current, past, details, v2):
            sentence = parsed.canonical()
            assert parse_instruction(sentence) == parsed, sentence  # one grammar both ways
            samples.append(Sample(split, cur_img.dicom_id, past_img.dicom_id, sentence, location, severity))
            stats.per_operation[parsed.operation] += 1
            stats.per_split[split] += 1
            for name in parsed.finding_names:
                stats.per_finding[parsed.operation][name] += 1

    out.mkdir(parents=True, exist_ok=True)
    write_samples(out / INSTRUCTIONS_FILE, samples, v2=v2)
    stats.rows_written = len(samples)
    if write_images:
        _write_images(needed, jpg_root, out, image_size, fit, workers, stats)
    (out / STATS_FILE).write_text(json.dumps(stats.to_dict(), indent=2))
    return stats


def _write_images(needed: dict[str, Image], jpg_root: Path, out: Path, size: int, fit: Fit, workers: int,
                  stats: BuildStats) -> None:
    (out / "images").mkdir(exist_ok=True)
    todo = [img for did, img in sorted(needed.items()) if not image_path(out, did).exists()]
    stats.images_existing = len(needed) - len(todo)

    def one(img: Image) -> None:
        prepare_image(jpg_path(jpg_root, img), image_path(out, img.dicom_id), size, fit)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, todo))
    stats.images_written = len(todo)


def prepare_image(src: Path, dst: Path, size: int, fit: Fit = "squash") -> None:
    """A MIMIC-CXR-JPG image -> `size`x`size` 8-bit grayscale PNG (written atomically)."""
    from PIL import Image as PILImage

    with PILImage.open(src) as im:
        gray = im.convert("L")
        w, h = gray.size
        if fit == "squash":
            res = gray.resize((size, size), PILImage.Resampling.BILINEAR)
        elif fit == "crop":
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            res = gray.crop(box).resize((size, size), PILImage.Resampling.BILINEAR)
        elif fit == "pad":
            scale = size / max(w, h)
            inner = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))), PILImage.Resampling.BILINEAR)
            res = PILImage.new("L", (size, size), 0)
            res.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
        else:
            raise ValueError(f"unknown fit {fit!r} (squash, pad, crop)")
    tmp = dst.with_suffix(".tmp.png")
    res.save(tmp)
    tmp.replace(dst)


def stats_table(stats: BuildStats) -> Any:
    """A rich table of what was kept and dropped."""
    from rich.table import Table

    d = stats.to_dict()
    table = Table(title=f"MIMIC-EDIT-INSTRUCTION ({'v2' if stats.v2 else 'v1'})")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("input_rows", "difference_rows", "pairs_kept", "rows_written", "images_written"):
        table.add_row(key, str(d[key]))
    for op, n in sorted(d["per_operation"].items()):
        table.add_row(f"rows: {op}", str(n))
    for op, findings in d["per_finding"].items():
        for name, n in findings.items():
            table.add_row(f"  {op}: {name}", str(n))
    for split, n in sorted(d["per_split"].items()):
        table.add_row(f"split: {split}", str(n))
    for reason, n in d["dropped"].items():
        table.add_row(f"dropped pairs: {reason}", str(n))
    for phrase, n in list(d["unknown_findings"].items())[:20]:
        table.add_row(f"  unknown finding: {phrase}", str(n))
    return table
