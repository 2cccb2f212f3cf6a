"""`build_dataset`: MIMIC-EDIT-INSTRUCTION's instructions.csv, stats.json and images from the release
files (the rules are in the package docstring)."""

from __future__ import annotations

import json
from pathlib import Path

from editor.instructions import parse_instruction
from editor.training.format import INSTRUCTIONS_FILE, STATS_FILE, Sample, write_samples
from editor.training.mimic.answers import StudyDetails, instruction_rows, parse_difference_answer
from editor.training.mimic.images import Fit, write_dataset_images
from editor.training.mimic.sources import (
    Image,
    choose_frontal,
    norm_id,
    read_metadata,
    read_records,
    read_split,
    require_columns,
)
from editor.training.mimic.stats import BuildStats


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
            require_columns(row, ("study_id", "ref_id", "question_type", "answer"), str(questions))
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
        for parsed, location, severity in instruction_rows(diff, current, past, details, v2):
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
        write_dataset_images(needed, jpg_root, out, image_size, fit, workers, stats)
    (out / STATS_FILE).write_text(json.dumps(stats.to_dict(), indent=2))
    return stats
