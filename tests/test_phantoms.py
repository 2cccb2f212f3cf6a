"""The phantom generator: drawing, findings on the right side, the dataset files, determinism, the CLI."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from editor.instructions import parse_instruction
from editor.training.format import read_samples
from editor.training.phantoms import (
    Findings,
    Patient,
    change_mask,
    make_pair,
    region_masks,
    render,
    write_dataset,
)

SIZE = 96


def _patient(k: int = 0) -> Patient:
    return Patient.sample(np.random.default_rng([77, k]))


def test_anatomy_lungs_dark_heart_bright_and_mostly_image_right() -> None:
    p = _patient()
    img = render(p, Findings(), SIZE)
    regions = region_masks(p, SIZE)
    lungs = regions["lung_image_left"] | regions["lung_image_right"]
    assert img[lungs].mean() < 0.3 < img[~lungs].mean()
    heart_only = render(p, Findings(), SIZE) - render(p, Findings(cardiomegaly=True), SIZE)
    # The heart's enlargement (where the two drawings differ) lies mostly right of the midline (PA).
    changed = np.abs(heart_only) > 0.03
    cols = np.nonzero(changed)[1] / SIZE
    assert (cols > p.cx).mean() > 0.6


def test_left_effusion_brightens_the_image_right_base_only() -> None:
    p = _patient(1)
    before = render(p, Findings(), SIZE)
    regions = region_masks(p, SIZE)
    gains = []
    for severity in ("small", "moderate", "large"):
        diff = render(p, Findings(effusion={"left": severity}), SIZE) - before
        gains.append(diff[regions["base_image_right"]].mean())
        assert np.abs(diff[regions["lung_image_left"]]).max() == 0.0  # the patient's right is untouched
    assert 0.005 < gains[0] < gains[1] < gains[2]
    small = change_mask(before, render(p, Findings(effusion={"left": "small"}), SIZE)).sum()
    large = change_mask(before, render(p, Findings(effusion={"left": "large"}), SIZE)).sum()
    assert large > 2 * small > 0


def test_pneumothorax_and_opacity_sit_in_their_place() -> None:
    p = _patient(2)
    before = render(p, Findings(), SIZE)
    ptx = change_mask(before, render(p, Findings(pneumothorax="right"), SIZE))
    rows, cols = np.nonzero(ptx)
    assert ptx.any() and (cols / SIZE < p.cx).all()  # patient right = image left
    assert (rows / SIZE).mean() < p.top + 0.5 * (p.base - p.top)  # apical
    opac = change_mask(before, render(p, Findings(opacity=("left", "lower")), SIZE))
    rows, cols = np.nonzero(opac)
    assert opac.any() and (cols / SIZE > p.cx).all()
    assert (rows / SIZE).mean() > p.top + 0.5 * (p.base - p.top)


def test_pairs_speak_the_editor_grammar_and_masks_match_the_change() -> None:
    ops = set()
    for i in range(40):
        pair = make_pair(3, i, 64)
        parsed = parse_instruction(pair.instruction)
        assert parsed.canonical() == pair.instruction
        assert parsed.finding_names == (pair.spec.finding,)
        ops.add(parsed.operation)
        if pair.spec.finding != "cardiomegaly":
            assert pair.spec.side in parsed.locations
        assert pair.mask.any()
        assert pair.past.dtype == np.uint8 and pair.past.shape == (64, 64)
        # Outside the change mask the two time points are the same picture (same noise, same exposure).
        outside = ~_dilate(pair.mask, 3)
        assert np.abs(pair.past.astype(int) - pair.current.astype(int))[outside].max() <= 2
    assert ops == {"add", "remove", "change"}


def _dilate(mask: np.ndarray, n: int) -> np.ndarray:
    from scipy import ndimage

    return np.asarray(ndimage.binary_dilation(mask, iterations=n))


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_dataset_layout_is_read_by_the_trainer_and_deterministic(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", n=24, size=64, seed=5)
    write_dataset(tmp_path / "b", n=24, size=64, seed=5, workers=2)
    write_dataset(tmp_path / "c", n=24, size=64, seed=6)
    assert _tree_hash(tmp_path / "a") == _tree_hash(tmp_path / "b")  # same seed, same bytes, any workers
    assert _tree_hash(tmp_path / "a") != _tree_hash(tmp_path / "c")
    samples = read_samples(tmp_path / "a", split=None)  # the reader `x2x train` uses
    assert len(samples) == 24 and a["n"] == 24
    with (tmp_path / "a" / "instructions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for row, s in zip(rows, samples, strict=True):
        for dicom_id in (s.past_dicom_id, s.current_dicom_id):
            im = Image.open(tmp_path / "a" / "images" / f"{dicom_id}.png")
            assert im.mode == "L" and im.size == (64, 64)
        mask = np.asarray(Image.open(tmp_path / "a" / "masks" / f"{row['pair_id']}.png"))
        assert mask.any()
        if "pleural effusion" in s.instruction and s.severity and " to " not in s.severity:
            assert s.severity in s.instruction
    assert {s.split for s in samples} <= {"train", "validate", "test"}


def test_cli_writes_a_dataset(tmp_path: Path) -> None:
    from dicom_node.cli import app

    result = CliRunner().invoke(app, ["dataset", "phantoms", str(tmp_path / "ph"), "--n", "6", "--size", "64",
                                      "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert len(read_samples(tmp_path / "ph", split=None)) == 6
    assert '"kind": "x2x-phantoms"' in result.output


@pytest.mark.slow
def test_build_demo_command_runs_the_whole_recipe(tmp_path: Path) -> None:
    """`x2x model build-demo` end to end at toy scale: phantoms -> VAE -> UNet via train() -> labelled folder."""
    import json

    from dicom_node.cli import app
    from editor.demo import DEMO_KIND, DEMO_MODEL_ID
    from editor.model import describe_model

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, [
        "model", "build-demo", str(out), "--device", "cpu", "--pairs", "12",
        "--vae-steps", "2", "--unet-steps", "2", "--work-dir", str(tmp_path / "work"),
    ])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "x2x_model.json").read_text())
    assert meta["model_id"] == DEMO_MODEL_ID and meta["kind"] == DEMO_KIND
    assert "phantom" in meta["warning"] and meta["resolution"] == 128
    assert meta["recipe"]["unet_steps_done"] == 2 and meta["recipe"]["vae"]["steps"] == 2
    assert len(meta["unet_loss_first_last"]) == 2
    info = describe_model(out)
    assert info.model_id == DEMO_MODEL_ID and info.resolution == 128
    vae_cfg = json.loads((out / "vae" / "config.json").read_text())
    assert len(vae_cfg["block_out_channels"]) == 4  # 8x VAE: 128 px -> 16x16 latents
    assert meta["recipe"]["cache_latents"] and (tmp_path / "work" / "unet-run" / "latent_cache.pt").is_file()
    assert vae_cfg["scaling_factor"] != 0.18215  # measured from the trained latents
