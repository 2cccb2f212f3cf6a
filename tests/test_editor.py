"""The editor end to end on the tiny random model (CPU): determinism, equivalence with diffusers' IP2P
pipeline, RSE identity outside the mask, the real chest CR round trip and the `x2x edit` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from editor.composite import blend_stored, feather_alpha
from editor.editor import Editor
from editor.relevance import normalise_relevance
from editor.types import EditParams, SourceImage
from tests.support.research_names import RESEARCH_31

PROMPT = "Add the finding of pleural effusion."


@pytest.fixture(scope="module")
def editor(tiny_model_dir: Path) -> Editor:
    return Editor.from_pretrained(tiny_model_dir, device="cpu")


def _test_image(height: int = 512, width: int = 512) -> np.ndarray:
    """A smooth chest-like pattern in [0, 1] (two dark lung fields on a brighter background)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    lungs = np.exp(-(((xx - 0.3) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    lungs += np.exp(-(((xx - 0.7) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    return np.clip(0.85 - 0.6 * lungs + 0.03 * np.sin(37 * yy), 0, 1).astype(np.float32)


def _rgb_tensor(gray01: np.ndarray):  # type: ignore[no-untyped-def]
    import torch

    t = torch.from_numpy(gray01 * 2 - 1)
    return t[None, None].expand(1, 3, *t.shape).contiguous()


def _lower_half_prior(shape: tuple[int, int]) -> np.ndarray:
    prior = np.zeros(shape, dtype=np.float32)
    prior[shape[0] // 2 :, :] = 1.0
    return prior


# ------------------------------------------------------------------------------------- pure functions


def test_relevance_normalisation_clips_outliers_at_q3_plus_1p5_iqr() -> None:
    raw = np.arange(16, dtype=np.float64).reshape(4, 4)
    raw[0, 0] = 1000.0  # an outlier: clipped to Q3 + 1.5 IQR, so it does not squash the rest
    out = normalise_relevance(raw)
    q1, q3 = np.percentile(raw, [25, 75], method="midpoint")
    upper = q3 + 1.5 * (q3 - q1)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert out[0, 0] == 1.0
    np.testing.assert_allclose(out[1, 0], (4 - 1) / (upper - 1), rtol=1e-6)
    assert not normalise_relevance(np.full((3, 3), 5.0)).any()  # flat map -> all zeros


def test_feathered_alpha_is_zero_outside_the_mask_and_blend_is_exact_there() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:30, 15:40] = True
    alpha = feather_alpha(mask, 4)
    assert (alpha[~mask] == 0).all()
    assert alpha[20, 27] == 1.0 and 0 < alpha[10, 27] < 1  # ramps up inside the edge
    rng = np.random.default_rng(1)
    source = rng.integers(0, 4096, size=mask.shape).astype(np.uint16)
    edited = rng.integers(0, 4096, size=mask.shape).astype(np.uint16)
    out = blend_stored(source, edited, alpha)
    assert out.dtype == np.uint16
    assert np.array_equal(out[~mask], source[~mask])
    assert np.array_equal(out[alpha == 1], edited[alpha == 1])
    assert np.array_equal(blend_stored(source, edited, feather_alpha(np.zeros_like(mask), 4)), source)


# ------------------------------------------------------------------------------------------ model grid


def test_rse_off_with_noise_start_reproduces_diffusers_pipeline(editor: Editor) -> None:
    """Plain IP2P through our loop == StableDiffusionInstructPix2PixPipeline, same components and seed."""
    import torch

    from editor.model import make_generator, pipeline_from_model

    gray = _test_image()
    params = EditParams(steps=2, rse=False, start="noise")
    ours = editor.edit_model_grid(_rgb_tensor(gray), PROMPT, np.ones_like(gray), seed=11, params=params)
    pipe = pipeline_from_model(editor.model)
    reference = pipe(
        PROMPT, image=torch.from_numpy(gray)[None, None].expand(1, 3, 512, 512).contiguous(),
        num_inference_steps=2, guidance_scale=7.5, image_guidance_scale=1.5,
        generator=make_generator(editor.model.device, 11), output_type="np",
    ).images[0]  # (H, W, 3) in [0, 1]
    assert ours.image is not None and ours.mask.all()
    diff = np.abs(ours.image.transpose(1, 2, 0) - reference).max()
    assert diff <= 1e-4, diff
    assert np.abs(ours.image.transpose(1, 2, 0) - gray[..., None]).max() > 1e-2  # it did edit


def test_rse_loop_blends_to_the_original_outside_the_latent_mask(editor: Editor) -> None:
    """Mask all zeros: "next" ends exactly on the clean original, "current" one noise level above it."""
    import torch

    from editor.model import make_generator
    from editor.rse import encode_text, rse_denoise

    m = editor.model
    with torch.inference_mode():
        image_latents = m.vae.encode(_rgb_tensor(_test_image(256, 256))).latent_dist.mode()
        emb = encode_text(m.tokenizer, m.text_encoder, [PROMPT, ""], m.device)
    source = image_latents * m.scaling_factor
    results = {}
    for blend in ("next", "current"):
        results[blend] = rse_denoise(
            m.unet, editor._scheduler(), prompt_embeds=torch.cat([emb[:1], emb[1:], emb[1:]]),
            image_latents=image_latents, source_latents=source,
            latent_mask=torch.zeros((1, 1, 32, 32)), steps=2, text_guidance=7.5, image_guidance=1.5,
            start="source", blend_timestep=blend, generator=make_generator(m.device, 0),  # type: ignore[arg-type]
        )
    assert torch.equal(results["next"], source)
    assert not torch.equal(results["current"], source)


def test_model_grid_mask_lies_inside_the_prior(editor: Editor) -> None:
    gray = _test_image()
    prior = _lower_half_prior(gray.shape)
    edit = editor.edit_model_grid(_rgb_tensor(gray), PROMPT, prior, seed=3, params=EditParams(steps=2, tau=0.05))
    assert edit.mask.any()
    assert not edit.mask[prior == 0].any()
    assert not edit.mask_latent[:32].any()  # the prior's upper half is 0 at the latent grid too
    assert edit.relevance_latent.shape == (64, 64)
    assert edit.relevance.min() >= 0 and edit.relevance.max() <= 1
    np.testing.assert_allclose(edit.guidance, prior * edit.relevance, atol=1e-6)


# --------------------------------------------------------------------------------------- Editor.edit


def _source(height: int = 300, width: int = 260) -> SourceImage:
    """A 12-bit MONOCHROME2 chest-like image with a window (non-square, not a multiple of 8)."""
    stored = np.rint(_test_image(height, width) * 4000 + 40).astype(np.uint16)
    return SourceImage(pixels=stored, bits_stored=12, window_center=2048, window_width=4096,
                       patient_orientation=("L", "F"), view_position="PA")


def _paper_prior_dir(tmp_path: Path) -> Path:
    """A research-release style pseudo mask: pleural effusion allowed in the lower half only."""
    folder = tmp_path / "paper_masks"
    folder.mkdir()
    np.save(folder / "pseudo_mask_Effusion.npy", _lower_half_prior((512, 512)))
    return folder


def test_same_seed_is_byte_identical_and_another_seed_differs(editor: Editor) -> None:
    src = _source()
    params = EditParams(steps=2, tau=0.3, prior="none", resolution=256)
    a = editor.edit(src, PROMPT, seed=1, params=params)
    b = editor.edit(src, PROMPT, seed=1, params=params)
    c = editor.edit(src, PROMPT, seed=2, params=params)
    assert a.mask.any()
    assert a.counterfactual.tobytes() == b.counterfactual.tobytes()
    assert a.relevance.tobytes() == b.relevance.tobytes() and np.array_equal(a.mask, b.mask)
    assert a.counterfactual.tobytes() != c.counterfactual.tobytes()


def test_rse_keeps_every_pixel_outside_the_mask_and_the_mask_inside_the_prior(
    editor: Editor, tmp_path: Path
) -> None:
    src = _source()
    params = EditParams(steps=2, tau=0.05, prior="paper", paper_prior_dir=str(_paper_prior_dir(tmp_path)),
                        resolution=256)
    result = editor.edit(src, PROMPT, seed=5, params=params)
    assert result.prior_source == "paper"
    assert result.mask.any() and 0 < result.coverage < 1
    assert not result.mask[: src.shape[0] // 2 - 2].any()  # the prior's upper half stays untouched
    outside = ~result.mask
    assert np.array_equal(result.counterfactual[outside], src.pixels[outside])
    assert not np.array_equal(result.counterfactual[result.mask], src.pixels[result.mask])
    assert result.counterfactual.dtype == src.pixels.dtype and result.counterfactual.shape == src.shape
    assert set(result.finding_masks) == {"pleural effusion"}
    assert np.array_equal(result.finding_masks["pleural effusion"], result.mask)
    for arr in (result.relevance, result.guidance):
        assert arr.dtype == np.float32 and arr.shape == src.shape and arr.min() >= 0 and arr.max() <= 1
    assert set(result.timings) >= {"preprocess", "prior", "encode", "relevance", "denoise", "decode",
                                   "composite", "total"}
    summary = json.loads(json.dumps(result.summary()))
    assert summary["model_id"] == editor.model_id and summary["model_hash"] == editor.model_hash
    assert summary["synthetic"] is True


def test_empty_mask_returns_the_source_unchanged(editor: Editor, tmp_path: Path) -> None:
    src = _source()
    # an all-zero region prior: G = prior x R is 0 everywhere, so no pixel reaches tau
    np.save(tmp_path / "pseudo_mask_Effusion.npy", np.zeros((512, 512), np.float32))
    params = EditParams(steps=2, prior="paper", paper_prior_dir=str(tmp_path), resolution=256)
    result = editor.edit(src, PROMPT, seed=0, params=params)
    assert not result.mask.any() and result.coverage == 0.0
    assert result.counterfactual.tobytes() == src.pixels.tobytes()
    assert any("empty guidance mask" in note for note in result.provenance["notes"])


def test_two_step_plain_ip2p_edit_on_512(editor: Editor) -> None:
    src = _source(512, 512)
    result = editor.edit(src, PROMPT, seed=0, params=EditParams(steps=2, rse=False))
    assert result.mask.all() and result.coverage == 1.0
    assert result.provenance["model_shape"] == [512, 512] and result.provenance["latent_shape"] == [64, 64]
    assert result.counterfactual.dtype == np.uint16
    assert result.counterfactual.max() <= 4095  # clipped to 12 bits stored
    assert np.abs(result.counterfactual.astype(int) - src.pixels.astype(int)).mean() > 10  # it edited


@pytest.mark.slow
def test_real_chest_cr_round_trip(editor: Editor, chest_cr_path: Path) -> None:
    from editor.source import source_from_file

    src = source_from_file(chest_cr_path)
    assert src.photometric == "MONOCHROME1"
    params = EditParams(steps=2, tau=0.05)
    result = editor.edit(src, "Add the finding of left pleural effusion.", seed=0, params=params)
    assert result.counterfactual.shape == src.shape and result.counterfactual.dtype == src.pixels.dtype
    lo, hi = 0, 2**src.bits_stored - 1
    assert lo <= result.counterfactual.min() and result.counterfactual.max() <= hi
    assert result.prior_source == "anatomy"
    assert result.mask.any() and result.coverage < 0.5
    outside = ~result.mask
    assert np.array_equal(result.counterfactual[outside], src.pixels[outside])
    # Patient left is on the image's right on this PA image (PatientOrientation L\F).
    cols = np.nonzero(result.mask)[1]
    assert cols.mean() > src.shape[1] / 2
    # MONOCHROME1 handled: the display of the source has bright bone (mediastinum brighter than lungs).
    disp = result.source_display
    assert disp is not None
    h, w = disp.shape
    band = disp[h // 3 : 2 * h // 3]
    assert band[:, int(w * 0.45) : int(w * 0.55)].mean() > band[:, int(w * 0.2) : int(w * 0.3)].mean()


def test_x2x_edit_cli_writes_all_outputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from dicom_node.cli import app

    png = tmp_path / "chest.png"
    Image.fromarray(np.rint(_test_image(200, 232) * 255).astype(np.uint8)).save(png)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["edit", str(png), "--instruction", PROMPT, "--model", str(tiny_model_dir),
                                   "--steps", "2", "--seed", "3", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" in res.output and "x2x-tiny-random-fixture" in res.output
    names = {"counterfactual.png", "guidance_overlay.png", "relevance.npy", "guidance.npy", "mask.png", "result.json"}
    assert names <= {p.name for p in out.iterdir()}
    assert np.asarray(Image.open(out / "counterfactual.png")).shape == (200, 232)
    assert np.asarray(Image.open(out / "guidance_overlay.png")).shape == (200, 232, 3)
    assert np.asarray(Image.open(out / "mask.png")).shape == (200, 232)
    relevance = np.load(out / "relevance.npy")
    assert relevance.shape == (200, 232) and relevance.dtype == np.float32
    summary = json.loads((out / "result.json").read_text())
    assert summary["model_id"] == "x2x-tiny-random-fixture" and summary["seed"] == 3
    assert summary["params"]["steps"] == 2 and summary["synthetic"] is True


def test_x2x_edit_cli_rejects_an_unknown_finding(tiny_model_dir: Path, tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from dicom_node.cli import app

    png = tmp_path / "chest.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(png)
    res = CliRunner().invoke(app, ["edit", str(png), "--instruction", "Add the finding of pleural efusion.",
                                   "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert not (tmp_path / "o").exists()


def test_relevance_is_seeded_and_k_samples_average(editor: Editor) -> None:
    gray = _test_image(256, 256)
    nowhere = np.zeros_like(gray)  # a zero prior: empty mask, so relevance only, no denoising

    def relevance(seed: int, samples: int) -> np.ndarray:
        params = EditParams(relevance_samples=samples)
        edit = editor.edit_model_grid(_rgb_tensor(gray), PROMPT, nowhere, seed=seed, params=params)
        assert edit.image is None and not edit.mask.any()
        return edit.relevance_latent

    one = relevance(4, 1)
    assert one.shape == (32, 32) and one.min() == 0.0 and one.max() == 1.0
    assert np.array_equal(one, relevance(4, 1))
    assert not np.array_equal(one, relevance(5, 1))
    averaged = relevance(4, 3)
    assert averaged.min() == 0.0 and averaged.max() == 1.0 and not np.array_equal(averaged, one)


# ------------------------------------------------------------------ prompt as written, profile, progress



def test_every_research_name_is_edited_with_the_prompt_as_written(editor: Editor) -> None:
    src = _source(64, 64)
    one_step = EditParams(steps=1, prior="none", resolution=64)
    for name in RESEARCH_31:
        text = f"Add the finding of {name}."
        result = editor.edit(src, text, seed=0, params=one_step)
        assert result.instruction.finding_names == (name,)
        assert result.prompt == text and result.provenance["prompt"] == text, name
        assert result.summary()["prompt"] == text


def test_the_text_encoder_sees_the_written_instruction_not_the_canonical_one(editor: Editor) -> None:
    from editor.instructions import parse_instruction

    src = _source(64, 64)
    params = EditParams(steps=1, prior="none", resolution=64)
    written = "Add the finding of  pneumonia in the right lower lobe."
    as_written = editor.edit(src, written, seed=2, params=params)
    assert as_written.prompt == "Add the finding of pneumonia in the right lower lobe."  # whitespace only
    canonical = parse_instruction(written).canonical()
    assert canonical == "Add the finding of right lower pneumonia."
    as_canonical = editor.edit(src, canonical, seed=2, params=params)
    assert as_written.instruction == as_canonical.instruction  # the same parse drives the prior ...
    assert not np.array_equal(as_written.relevance, as_canonical.relevance)  # ... but another prompt
    again = editor.edit(src, parse_instruction(written), seed=2, params=params)  # a parse keeps its text
    assert again.prompt == as_written.prompt and np.array_equal(again.relevance, as_written.relevance)


def test_step_callback_reports_every_denoising_step(editor: Editor) -> None:
    seen: list[int] = []
    editor.edit(_source(), PROMPT, seed=0, params=EditParams(steps=3, prior="none", resolution=64),
                step_callback=seen.append)
    assert seen == [0, 1, 2]


@pytest.fixture(scope="module")
def research_editor(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Editor:
    """The tiny model as the published checkpoint comes: no x2x_model.json, so the research profile."""
    import shutil

    folder = tmp_path_factory.mktemp("published") / "instructx2x"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "x2x_model.json").unlink()
    return Editor.from_pretrained(folder, device="cpu")


def test_undeclared_folder_is_fed_as_the_research_checkpoint_was_trained(research_editor: Editor) -> None:
    assert research_editor.model.profile.name == "research"
    src = _source(300, 260)  # portrait, not a multiple of 8
    result = research_editor.edit(src, PROMPT, seed=1, params=EditParams(steps=2, tau=0.05, prior="none",
                                                                         resolution=256))
    prov = result.provenance
    assert prov["model_shape"] == [256, 256]  # squashed square, aspect ignored
    assert prov["input_profile"]["profile"] == "research"
    assert "histogram equalisation" in prov["input_profile"]["intensity"]["kind"]
    assert prov["scheduler"]["name"].startswith("CompVis/stable-diffusion-v1-4 DDIM")
    assert prov["precision"]["latents"] == "float32"
    assert result.mask.any() and result.counterfactual.shape == src.shape
    outside = ~result.mask
    assert np.array_equal(result.counterfactual[outside], src.pixels[outside])  # bit-identical
    assert set(prov["prior_vs_relevance"]) >= {"prior_pixels", "relevance_at_least_tau", "removed_by_relevance"}


@pytest.mark.slow
def test_x2x_edit_shows_step_progress_on_a_terminal_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys
    import threading

    from PIL import Image

    png = tmp_path / "chest.png"
    Image.fromarray(np.rint(_test_image(64, 64) * 255).astype(np.uint8)).save(png)
    cmd = [sys.executable, "-m", "dicom_node.cli", "edit", str(png), "-i", PROMPT, "--model", str(tiny_model_dir),
           "--steps", "3", "--device", "cpu", "--prior", "none"]
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # read the terminal while the command runs (a full pty would block it)
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end and everything was read
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([*cmd, "--out", str(tmp_path / "tty")], stdout=subprocess.PIPE, stderr=slave,
                              timeout=300, env={**os.environ, "COLUMNS": "100"})
    finally:
        os.close(slave)
        reader.join(timeout=30)
        os.close(master)
    assert proc.returncode == 0, proc.stdout
    assert b"denoising" in b"".join(chunks)  # a progress bar on the terminal
    piped = subprocess.run([*cmd, "--out", str(tmp_path / "pipe")], capture_output=True, timeout=300)
    assert piped.returncode == 0 and b"denoising" not in piped.stderr  # nothing in logs and pipes
    assert b"SYNTHETIC edit 'Add the finding of pleural effusion.'" in piped.stdout
