"""`x2x batch` over image inputs: a PNG/JPG tree, and a MIMIC-EDIT-INSTRUCTION table in the layout
`x2x dataset build` writes (instructions.csv + images/<dicom_id>.png). Outputs are image files (the
counterfactual at the source's size, the guidance map, the mask), no DICOM; one manifest row per edit;
the split filter selects rows and widening it later resumes instead of redoing."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from editor.training.format import Sample, write_samples
from tests.support.chest_copies import low_resolution_model

X2X = str(Path(sys.executable).with_name("x2x"))
IMAGE_OUTPUTS = {"source.png", "counterfactual.png", "overlay.png", "guidance_overlay.png", "mask.png",
                 "relevance.npy", "guidance.npy", "result.json"}


@pytest.fixture(scope="module")
def fast_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return low_resolution_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny128")


def _chest_png(chest_cr_path: Path, factor: int = 8) -> np.ndarray:
    """The chest CR as an 8-bit display image (bone bright), every `factor`-th pixel."""
    ds = pydicom.dcmread(chest_cr_path)
    px = ds.pixel_array[::factor, ::factor].astype(np.float64)
    px = (px - px.min()) / (px.max() - px.min())
    if ds.PhotometricInterpretation == "MONOCHROME1":
        px = 1.0 - px
    return np.round(px * 255).astype(np.uint8)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "X2X_CONFIG"}
    env.update(X2X_PATHS__VAR_DIR=str(tmp_path / "var"), COLUMNS="200")
    return env


@pytest.mark.slow
def test_batch_over_a_mimic_edit_instruction_table_edits_past_images_by_split(
    tmp_path: Path, chest_cr_path: Path, fast_model_dir: Path
) -> None:
    data = tmp_path / "mimic-edit-instruction"
    (data / "images").mkdir(parents=True)
    grey = _chest_png(chest_cr_path)
    for dicom_id in ("past-1", "cur-1", "past-2"):
        Image.fromarray(grey).save(data / "images" / f"{dicom_id}.png")
    write_samples(data / "instructions.csv", [
        Sample("test", "cur-1", "past-1", "Add the finding of pleural effusion."),
        Sample("test", "cur-9", "past-missing", "Remove the finding of cardiomegaly."),
        Sample("test", "cur-1", "past-1", "Add the finding of unicornosis."),
        Sample("train", "cur-2", "past-2", "Remove the finding of edema."),
    ], v2=False)
    out = tmp_path / "out"
    cmd = [X2X, "batch", str(data / "instructions.csv"), "--out", str(out), "--model", str(fast_model_dir),
           "--steps", "2", "--seed", "4"]
    r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    rows = _rows(out / "manifest.csv")
    assert [(row["source_uid"], row["status"]) for row in rows] == [
        ("past-1", "done"), ("past-missing", "skipped"), ("past-1", "skipped")]
    assert "past image 'past-missing' not found" in rows[1]["reason"]
    assert "unicornosis" in rows[2]["reason"]
    done = rows[0]
    assert done["source_path"] == "images/past-1.png" and done["sent"] == ""
    outputs = [out / p for p in done["outputs"].split(";")]
    assert {p.name for p in outputs} == IMAGE_OUTPUTS, "image files only: no DICOM objects for an image input"
    assert all(p.is_file() and p.stat().st_size > 0 for p in outputs)
    counterfactual = np.asarray(Image.open(next(p for p in outputs if p.name == "counterfactual.png")))
    assert counterfactual.shape == grey.shape, "the counterfactual at the source image's own size"
    mask = np.asarray(Image.open(next(p for p in outputs if p.name == "mask.png")))
    guidance = np.load(next(p for p in outputs if p.name == "guidance.npy"))
    assert guidance.shape == mask.shape == grey.shape and guidance.min() >= 0.0 and guidance.max() <= 1.0

    # widening the split: the three test rows are already in the manifest, only the train row is new
    r2 = subprocess.run([*cmd, "--split", "all"], env=_env(tmp_path), capture_output=True, timeout=600)
    assert r2.returncode == 0, r2.stderr.decode()[-3000:]
    assert "3 already in the manifest, 1 to go" in r2.stderr.decode()
    rows = _rows(out / "manifest.csv")
    assert len(rows) == 4 and rows[3]["source_uid"] == "past-2" and rows[3]["status"] == "done"


@pytest.mark.slow
def test_batch_over_a_png_jpg_tree_writes_image_outputs(tmp_path: Path, chest_cr_path: Path,
                                                        fast_model_dir: Path) -> None:
    src = tmp_path / "jpgs"
    (src / "p10" / "s1").mkdir(parents=True)
    grey = _chest_png(chest_cr_path)
    Image.fromarray(grey).save(src / "p10" / "s1" / "a.png")
    Image.fromarray(grey).convert("RGB").save(src / "p10" / "s1" / "b.jpg", quality=95)
    colour = np.stack([grey, grey // 2, grey // 3], axis=-1)
    Image.fromarray(colour).save(src / "p10" / "photo.png")
    (src / "readme.txt").write_text("not an image")
    out = tmp_path / "out"
    r = subprocess.run([X2X, "batch", str(src), "--instruction", "Add the finding of pleural effusion.", "--out",
                        str(out), "--model", str(fast_model_dir), "--steps", "2"], env=_env(tmp_path),
                       capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    by_path = {row["source_path"]: row for row in _rows(out / "manifest.csv")}
    assert {p: row["status"] for p, row in by_path.items()} == {
        "p10/photo.png": "skipped", "p10/s1/a.png": "done", "p10/s1/b.jpg": "done", "readme.txt": "skipped"}
    assert "colour image" in by_path["p10/photo.png"]["reason"]
    assert "not a DICOM file or a PNG/JPG image" in by_path["readme.txt"]["reason"]
    for rel in ("p10/s1/a.png", "p10/s1/b.jpg"):
        row = by_path[rel]
        assert row["source_uid"] == rel.rsplit(".", 1)[0].replace("/", "-")
        assert {Path(p).name for p in row["outputs"].split(";")} == IMAGE_OUTPUTS


def test_table_source_refuses_instruction_options(tmp_path: Path) -> None:
    table = tmp_path / "instructions.csv"
    write_samples(table, [Sample("test", "c", "p", "Add the finding of edema.")], v2=False)
    r = subprocess.run([X2X, "batch", str(table), "--out", str(tmp_path / "o"), "--instruction",
                        "Add the finding of edema."], capture_output=True, env=_env(tmp_path))
    assert r.returncode == 2 and b"gives each row's instruction" in r.stderr
    r = subprocess.run([X2X, "batch", str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True,
                       env=_env(tmp_path))
    assert r.returncode == 2 and b"pass " in r.stderr and b"instructions.csv to edit by its rows" in r.stderr
