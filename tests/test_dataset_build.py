"""`x2x dataset build` on small synthetic fixtures in the real MIMIC-Diff-VQA / MIMIC-CXR(-JPG) formats."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editor.instructions import parse_instruction
from editor.training.format import read_samples
from editor.training.mimic import build_dataset, parse_difference_answer

SUBJECT = "10000032"
# study -> [(dicom_id, ViewPosition, jpg written?, split)]
STUDIES: dict[str, list[tuple[str, str, bool, str]]] = {
    "50000001": [("d1-frontal", "PA", True, "train"), ("d1-lateral", "LATERAL", True, "train")],
    # AP sorts first by id but PA is preferred: the PA image must be chosen.
    "50000002": [("d2-a-ap", "AP", True, "train"), ("d2-b-pa", "PA", True, "train")],
    "50000003": [("d3-lateral", "LL", True, "train")],  # lateral only
    "50000004": [("d4-missing", "PA", False, "train")],  # JPG absent from the root
    "50000005": [("d5-pa", "PA", True, "test")],
    "50000006": [("d6-ap", "AP", True, "test")],
    "50000007": [("d7-nosplit", "PA", True, "")],  # not in the split file
}
ADD_REMOVE_CHANGE = (
    "the main image has additional findings of edema, and pleural effusion than the reference image. "
    "the main image is missing the findings of atelectasis than the reference image. "
    "the level of cardiomegaly has changed from mild to moderate."
)
# (study_id, ref_id, question_type, question, answer)
QUESTIONS: list[tuple[str, str, str, str, str]] = [
    ("50000002", "50000001", "difference", "what has changed compared to the reference image?", ADD_REMOVE_CHANGE),
    ("50000002", "50000001", "difference", "what has changed in the main image?", ADD_REMOVE_CHANGE),  # duplicate
    ("50000002", "", "difference", "what has changed?", ADD_REMOVE_CHANGE),  # no past study
    ("50000005", "50000001", "difference", "what has changed?", "nothing has changed."),
    ("50000006", "50000001", "difference", "what has changed?",
     "the main image has additional findings of foreign body than the reference image."),
    # one known and one unknown finding: the whole pair goes (edema alone would be label noise)
    ("50000006", "50000005", "difference", "what has changed?",
     "the main image has additional findings of edema, and foreign body than the reference image."),
    ("50000003", "50000001", "difference", "what has changed?", ADD_REMOVE_CHANGE),  # lateral only
    ("50000004", "50000001", "difference", "what has changed?", ADD_REMOVE_CHANGE),  # missing image
    ("50000099", "50000001", "difference", "what has changed?", ADD_REMOVE_CHANGE),  # not in metadata
    ("50000005", "50000002", "difference", "what has changed?",
     "the level of pleural effusion has changed from small to humongous."),  # unknown level
    ("50000002", "50000005", "difference", "what has changed?", "the patient looks well."),  # unparsed
    ("50000007", "50000001", "difference", "what has changed?", ADD_REMOVE_CHANGE),  # no split
    # single-image questions that give v2 detail
    ("50000002", "50000001", "location", "where in the image is the pleural effusion located?",
     "left lung, right lung"),
    ("50000002", "50000001", "level", "what level is the pleural effusion?", "small"),
    ("50000001", "50000000", "location", "where in the image is the atelectasis located?", "left lower lung"),
    ("50000002", "50000001", "abnormality", "what abnormalities are seen in this image?", "edema"),
]
DROP_EXPECTED = {
    "no_past_study": 1, "duplicate_pair": 1, "unparsed_answer": 1, "no_difference": 1, "unknown_finding": 2,
    "unknown_level": 1, "study_not_in_metadata": 1, "lateral_only": 1, "missing_image": 1, "no_split": 1,
}


def _write_csv(path: Path, header: list[str], rows: list[list[str]], *, gz: bool = False) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture()
def mimic(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "mimic-cxr-jpg"
    meta_rows, split_rows = [], []
    for n, (study, images) in enumerate(STUDIES.items()):
        for k, (dicom, view, exists, split) in enumerate(images):
            meta_rows.append([dicom, SUBJECT, study, "CHEST (PA AND LAT)", view, "3056", "2544"])
            if split:
                split_rows.append([dicom, study, SUBJECT, split])
            if exists:
                folder = root / "files" / f"p{SUBJECT[:2]}" / f"p{SUBJECT}" / f"s{study}"
                folder.mkdir(parents=True, exist_ok=True)
                # portrait like MIMIC (w < h); brightness encodes the image so the PNG can be checked
                Image.fromarray(np.full((40, 30), 20 + 30 * n + k, np.uint8), mode="L").save(folder / f"{dicom}.jpg")
    metadata = _write_csv(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz",
        ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
         "Columns"], meta_rows, gz=True)
    split = _write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
                       split_rows)
    # the release has a leading unnamed index column and float-looking ids in places
    questions = _write_csv(
        tmp_path / "mimic_pair_questions.csv",
        ["", "study_id", "subject_id", "ref_id", "question_type", "question", "answer"],
        [[str(i), study, f"{SUBJECT}.0", ref and f"{ref}.0", qt, q, a]
         for i, (study, ref, qt, q, a) in enumerate(QUESTIONS)])
    return {"root": root, "metadata": metadata, "split": split, "questions": questions}


def test_answer_parser_forms() -> None:
    d = parse_difference_answer(ADD_REMOVE_CHANGE)
    assert [s.name for s in d.added] == ["edema", "pleural effusion"]
    assert [s.name for s in d.removed] == ["atelectasis"]
    assert [c.canonical() for c in d.changes] == ["Change the level of cardiomegaly from mild to moderate."]
    assert not d.unparsed and not d.unknown_findings
    assert parse_difference_answer("nothing has changed.").nothing_changed
    one = parse_difference_answer("the main image has an additional finding of enlargement of the cardiac "
                                  "silhouette than the reference image.")
    assert [s.name for s in one.added] == ["enlargement of the cardiac silhouette"]  # the research spelling
    syn = parse_difference_answer("the main image has additional findings of enlarged cardiac silhouette, and "
                                  "gastric distention than the reference image.")
    assert [s.name for s in syn.added] == ["enlargement of the cardiac silhouette", "gastric distention"]
    unk = parse_difference_answer("the main image has additional findings of edema, and foreign body "
                                  "than the reference image.")
    assert [s.name for s in unk.added] == ["edema"] and unk.unknown_findings == ["foreign body"]
    lvl = parse_difference_answer("the level of pleural effusion has changed from small to humongous.")
    assert lvl.empty and lvl.unknown_levels == ["small to humongous"]
    # MIMIC-Diff-VQA's multi-word and adverb levels
    multi = parse_difference_answer("the level of pleural effusion has changed from moderate to large to small.")
    assert [(c.level_from, c.level_to) for c in multi.changes] == [("moderate to large", "small")]
    adverb = parse_difference_answer("the level of edema has changed from mildly to moderately.")
    assert [(c.level_from, c.level_to) for c in adverb.changes] == [("mildly", "moderately")]


def test_build_v1_rules_and_drop_reasons(mimic: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ds"
    stats = build_dataset(mimic["questions"], mimic["metadata"], mimic["root"], out, split_file=mimic["split"],
                          v2=False)
    rows = read_samples(out, split=None)
    got = {(r.current_dicom_id, r.past_dicom_id, r.instruction, r.split) for r in rows}
    assert got == {  # the pair (d6-ap, d5-pa) with an unknown finding is dropped whole
        ("d2-b-pa", "d1-frontal", "Add the findings of edema and pleural effusion.", "train"),
        ("d2-b-pa", "d1-frontal", "Remove the finding of atelectasis.", "train"),
        ("d2-b-pa", "d1-frontal", "Change the level of cardiomegaly from mild to moderate.", "train"),
    }
    for r in rows:  # the editor's own grammar reads every instruction back unchanged
        assert parse_instruction(r.instruction).canonical() == r.instruction
    header = (out / "instructions.csv").read_text().splitlines()[0]
    assert header == "split,current_dicom_id,past_dicom_id,instruction"
    saved = json.loads((out / "stats.json").read_text())
    assert saved["dropped"] == DROP_EXPECTED
    assert saved["per_operation"] == {"add": 1, "remove": 1, "change": 1}
    assert saved["per_finding"]["add"] == {"edema": 1, "pleural effusion": 1}
    assert saved["unknown_findings"] == {"foreign body": 2}
    assert saved["pairs_dropped_by_unknown_finding"] == {"foreign body": 2}
    assert saved["pairs_kept"] == 1 and saved["rows_written"] == 3 == stats.rows_written
    assert saved["difference_rows"] == 12 and saved["input_rows"] == len(QUESTIONS)
    assert not (out / "images").exists()


def test_build_v2_location_and_severity(mimic: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ds2"
    build_dataset(mimic["questions"], mimic["metadata"], mimic["root"], out, split_file=mimic["split"])  # v2 default
    rows = [r for r in read_samples(out, split=None) if r.current_dicom_id == "d2-b-pa"]
    got = {(r.instruction, r.location, r.severity) for r in rows}
    assert got == {
        ("Add the finding of edema.", "", ""),
        # location question (left + right = bilateral) and level question of the current study
        ("Add the finding of small bilateral pleural effusion.", "bilateral", "small"),
        # removed finding: detail from the PAST study's questions
        ("Remove the finding of left lower atelectasis.", "left lower", ""),
        ("Change the level of cardiomegaly from mild to moderate.", "", "moderate"),
    }
    assert (out / "instructions.csv").read_text().splitlines()[0].endswith(",location,severity")


def test_build_images_and_split_column(mimic: dict[str, Path], tmp_path: Path) -> None:
    # questions with their own split column: no split file needed, and it wins
    with open(mimic["questions"], newline="") as fh:
        rows = list(csv.reader(fh))
    rows[0].append("split")
    for r in rows[1:]:
        r.append("val")
    q2 = _write_csv(tmp_path / "q_split.csv", rows[0], rows[1:])
    out = tmp_path / "ds3"
    stats = build_dataset(q2, mimic["metadata"], mimic["root"], out, write_images=True, image_size=32)
    samples = read_samples(out, split="val")
    assert samples and {s.split for s in read_samples(out, split=None)} == {"val"}
    assert stats.dropped["no_split"] == 0  # d7 has a split now
    ids = {d for s in samples for d in (s.current_dicom_id, s.past_dicom_id)}
    assert {p.stem for p in (out / "images").glob("*.png")} == ids
    png = Image.open(out / "images" / "d2-b-pa.png")
    assert png.mode == "L" and png.size == (32, 32)
    # study index 1, image index 1 -> value 20 + 30 + 1 (JPEG of a flat image is exact or nearly)
    assert abs(float(np.asarray(png).mean()) - 51) <= 1
    again = build_dataset(q2, mimic["metadata"], mimic["root"], out, write_images=True, image_size=32)
    assert again.images_written == 0 and again.images_existing == len(ids)  # existing images reused


def test_missing_split_source_is_an_error(mimic: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        build_dataset(mimic["questions"], mimic["metadata"], mimic["root"], tmp_path / "x")


def test_cli_dataset_build(mimic: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicom_node.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "dataset", "build", "--questions", str(mimic["questions"]), "--metadata", str(mimic["metadata"]),
        "--jpg-root", str(mimic["root"]), "--split-file", str(mimic["split"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "lateral_only" in result.output and "wrote 4 rows" in result.output  # v2 by default: one per row
    assert len(read_samples(out, split=None)) == 4
    assert (out / "instructions.csv").read_text().splitlines()[0].endswith(",location,severity")
    v1 = CliRunner().invoke(app, [
        "dataset", "build", "--questions", str(mimic["questions"]), "--metadata", str(mimic["metadata"]),
        "--jpg-root", str(mimic["root"]), "--split-file", str(mimic["split"]), "--out", str(tmp_path / "v1"),
        "--v1"])
    assert v1.exit_code == 0 and "wrote 3 rows" in v1.output
    bad = CliRunner().invoke(app, [
        "dataset", "build", "--questions", str(mimic["questions"]), "--metadata", str(mimic["metadata"]),
        "--jpg-root", str(mimic["root"]), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "split" in bad.output


def test_questions_as_json_give_the_same_rows(mimic: dict[str, Path], tmp_path: Path) -> None:
    with open(mimic["questions"], newline="") as fh:
        records = list(csv.DictReader(fh))
    as_json = tmp_path / "questions.json"
    as_json.write_text(json.dumps(records))
    build_dataset(mimic["questions"], mimic["metadata"], mimic["root"], tmp_path / "a", split_file=mimic["split"])
    build_dataset(as_json, mimic["metadata"], mimic["root"], tmp_path / "b", split_file=mimic["split"])
    assert (tmp_path / "a" / "instructions.csv").read_text() == (tmp_path / "b" / "instructions.csv").read_text()


def test_image_fit_modes(tmp_path: Path) -> None:
    from editor.training.mimic import prepare_image

    tall = np.full((40, 20), 200, np.uint8)  # portrait, like MIMIC-CXR
    tall[:10] = 50  # a dark top band (the "neck")
    src = tmp_path / "tall.png"
    Image.fromarray(tall).save(src)
    for fit in ("squash", "pad", "crop"):
        prepare_image(src, tmp_path / f"{fit}.png", 32, fit)  # type: ignore[arg-type]
    squash = np.asarray(Image.open(tmp_path / "squash.png"))
    pad = np.asarray(Image.open(tmp_path / "pad.png"))
    crop = np.asarray(Image.open(tmp_path / "crop.png"))
    assert squash.shape == pad.shape == crop.shape == (32, 32)
    assert squash[0, 16] == 50 and squash[-1, 16] == 200  # whole image kept, stretched sideways
    assert (pad[:, :8] == 0).all() and (pad[:, 24:] == 0).all() and pad[0, 16] == 50  # letterboxed
    assert (crop == 200).all()  # centre square: rows 10..30, the dark band is cut off
