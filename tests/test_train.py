"""`x2x train` on CPU with the tiny random model: it learns, it resumes exactly, it exports a loadable model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editor.training.format import Sample, image_path, write_samples
from editor.training.train import (
    PairDataset,
    TrainConfig,
    fixed_batch_loss,
    read_loss_log,
    swap_laterality_words,
    train,
)

RES = 64


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def pair_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four past/current pairs: the current image has a bright 'effusion' block the past one lacks."""
    ds = tmp_path_factory.mktemp("pairs")
    (ds / "images").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:RES, 0:RES]
    samples = []
    for i in range(4):
        past = 0.3 + 0.2 * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 300.0) + 0.02 * rng.standard_normal((RES, RES))
        cur = past.copy()
        x0 = 8 + 30 * (i % 2)
        cur[40:56, x0:x0 + 16] += 0.4
        for name, arr in ((f"past{i}", past), (f"cur{i}", cur)):
            Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(image_path(ds, name))
        side = "right" if i % 2 == 0 else "left"  # image left = patient right (standard PA)
        samples.append(Sample("train", f"cur{i}", f"past{i}", f"Add the finding of {side} pleural effusion."))
    samples.append(Sample("test", "cur0", "past0", "Add the finding of edema."))  # other split: not trained on
    write_samples(ds / "instructions.csv", samples, v2=False)
    return ds


def _cfg(model: Path, ds: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(base_model=model, dataset_dir=ds, output_dir=out, resolution=RES, train_batch_size=2,
                effective_batch_size=2, max_steps=20, checkpoint_every=0, log_every=1, progress=False, cpu=True)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.slow
def test_twenty_steps_lower_the_loss_and_export_a_model(tiny_model_dir: Path, pair_dataset: Path,
                                                        tmp_path: Path) -> None:
    before = fixed_batch_loss(tiny_model_dir, pair_dataset, resolution=RES)
    model = train(_cfg(tiny_model_dir, pair_dataset, tmp_path / "run"))
    after = fixed_batch_loss(model, pair_dataset, resolution=RES)
    # fixed batch, fixed noise and timesteps, no dropout: the only difference is the trained UNet
    assert after < 0.95 * before, (before, after)

    log = read_loss_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 21)) and all(np.isfinite(r["loss"]) for r in log)
    meta = json.loads((model / "x2x_model.json").read_text())
    assert meta["resolution"] == RES and meta["kind"] == "finetuned"
    assert meta["base_model"] == "x2x-tiny-random-fixture"
    assert meta["training"]["steps"] == 20 and meta["training"]["samples"] == 4  # train split only
    assert meta["training"]["effective_batch_size"] == 2 and meta["training"]["mixed_precision"] == "no"
    # the research config by default: EMA exported, +-2 degree rotation, no gradient clipping
    assert meta["training"]["ema"] is True and meta["training"]["rotation_degrees"] == 2.0
    assert meta["training"]["max_grad_norm"] is None
    assert meta["input_profile"] == "windowed-aspect"  # the base's declaration carries over
    # UNet changed; VAE and text encoder are the base's, byte for byte (frozen)
    base_w, new_w = _weights(tiny_model_dir), _weights(model)
    assert any(not (base_w[k] == new_w[k]).all() for k in base_w)
    for sub in ("vae", "text_encoder"):
        for f in (tiny_model_dir / sub).iterdir():
            assert (model / sub / f.name).read_bytes() == f.read_bytes()

    from editor.model import load_model  # what `x2x edit --model` uses

    loaded = load_model(model, device="cpu")
    assert loaded.resolution == RES and loaded.model_id == meta["model_id"]
    from editor.editor import Editor
    from editor.types import EditParams, SourceImage

    src = SourceImage(pixels=np.asarray(Image.open(image_path(pair_dataset, "past0"))), bits_stored=8,
                      view_position="PA")
    result = Editor.from_pretrained(model, device="cpu").edit(
        src, "Add the finding of left pleural effusion.", seed=0, params=EditParams(steps=2))
    assert result.model_id == meta["model_id"] and result.counterfactual.shape == src.shape


@pytest.mark.slow
def test_resume_reaches_the_same_weights(tiny_model_dir: Path, pair_dataset: Path, tmp_path: Path) -> None:
    # accumulation (2 micro-batches per step) and EMA are part of the state that must resume
    kw = dict(max_steps=4, effective_batch_size=4, checkpoint_every=2, use_ema=True, ema_decay=0.9)
    whole = train(_cfg(tiny_model_dir, pair_dataset, tmp_path / "whole", **kw))
    train(_cfg(tiny_model_dir, pair_dataset, tmp_path / "split", **{**kw, "max_steps": 2}))
    ckpt = tmp_path / "split" / "checkpoints" / "step-0000002"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    resumed = train(_cfg(tiny_model_dir, pair_dataset, tmp_path / "split", resume="latest", **kw))
    a, b = _weights(whole), _weights(resumed)
    assert all((a[k] == b[k]).all() for k in a), "resumed run differs from the uninterrupted one"
    # ... and the second half really trained: the step-2 weights are not the final ones
    from safetensors.torch import load_file

    mid = load_file(str(ckpt / "model.safetensors"))
    assert any(not (mid[k] == b[k]).all() for k in b)
    meta = json.loads((resumed / "x2x_model.json").read_text())
    assert meta["training"]["resumed_from_step"] == 2 and meta["training"]["gradient_accumulation_steps"] == 2
    # the log reads as one run, and its losses equal the uninterrupted run's
    whole_log, split_log = read_loss_log(tmp_path / "whole"), read_loss_log(tmp_path / "split")
    assert [r["loss"] for r in split_log] == [r["loss"] for r in whole_log] and len(split_log) == 4

    with pytest.raises(ValueError, match="cannot resume"):  # different data-affecting settings: refused
        train(_cfg(tiny_model_dir, pair_dataset, tmp_path / "split",
                   **{**kw, "max_steps": 6, "learning_rate": 3e-4, "resume": "latest"}))


def test_hflip_swaps_laterality_words(tiny_model_dir: Path, pair_dataset: Path) -> None:
    assert swap_laterality_words("Add the finding of Left lower and right upper opacity.") == (
        "Add the finding of Right lower and left upper opacity.")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_model_dir / "tokenizer"), local_files_only=True)
    from editor.training.format import read_samples

    ds = PairDataset(pair_dataset, read_samples(pair_dataset), RES, tok)
    plain, flipped = ds[(0, False)], ds[(0, True)]
    assert plain["text"] == "Add the finding of right pleural effusion."
    assert flipped["text"] == "Add the finding of left pleural effusion."
    assert (flipped["current"].flip(-1) == plain["current"]).all()
    assert plain["past"].shape == (3, RES, RES) and -1 <= float(plain["past"].min()) <= float(plain["past"].max()) <= 1


def test_training_defaults_are_the_research_config(tmp_path: Path) -> None:
    cfg = TrainConfig(base_model=tmp_path, dataset_dir=tmp_path, output_dir=tmp_path)
    assert cfg.use_ema is True and cfg.rotation_degrees == 2.0 and cfg.max_grad_norm is None
    assert cfg.max_steps == 6500  # the v2 schedule (location/severity instructions are the default)


def test_rotation_is_seeded_shared_by_the_pair_and_never_shows_corners(tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from editor.training.pair_dataset import load_rotated
    from editor.training.sample_order import SampleStream as _SampleStream

    plain, rotated = _SampleStream(50, seed=3, hflip=False), _SampleStream(50, seed=3, hflip=False,
                                                                        rotation_degrees=2.0)
    items = [rotated.item(p) for p in range(120)]
    assert [i[:2] for i in items] == [plain.item(p)[:2] for p in range(120)]  # same order as without
    angles = np.array([i[2] for i in items])
    assert np.abs(angles).max() <= 2.0 and np.unique(angles).size > 90
    assert [_SampleStream(50, 3, False, 2.0).item(p) for p in range(120)] == items  # seeded: exact resume

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    yy, xx = np.mgrid[0:RES, 0:RES]
    img = (40 + 150 * (xx > RES // 2) + 50 * (yy > RES // 2)).astype(np.uint8)  # edges show a rotation
    for name in ("a", "b"):
        Image.fromarray(img).save(image_path(ds, name))
    Image.fromarray(np.full((RES, RES), 255, np.uint8)).save(image_path(ds, "white"))
    tok = CLIPTokenizer.from_pretrained(str(tiny_model_dir / "tokenizer"), local_files_only=True)
    pair = PairDataset(ds, [Sample("train", "a", "b", "Add the finding of edema.")], RES, tok, rotation_degrees=2.0)
    turned = pair[(0, False, 1.7)]
    assert (turned["past"] == turned["current"]).all()  # one angle for both images of the pair
    assert not (turned["past"] == pair[(0, False, -1.7)]["past"]).all()
    assert turned["past"].shape == (3, RES, RES)
    white = load_rotated(image_path(ds, "white"), RES, 2.0, 2.0)
    assert white.shape == (RES, RES) and white.min() > 0.99  # the centre crop holds no rotated-in corner


def test_four_x_vae_and_resolution_check(tiny_model_dir: Path, pair_dataset: Path, tmp_path: Path) -> None:
    """A VAE with 4x downsampling (three blocks) trains at 32 px; a resolution off the grid is refused."""
    import shutil

    from diffusers import AutoencoderKL

    base = tmp_path / "vae4"
    shutil.copytree(tiny_model_dir, base)
    shutil.rmtree(base / "vae")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16),
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  layers_per_block=1, norm_num_groups=8, sample_size=32).eval().save_pretrained(base / "vae")
    from typer.testing import CliRunner

    from dicom_node.cli import app

    run = tmp_path / "run4"
    result = CliRunner().invoke(app, [
        "train", "--base-model", str(base), "--dataset", str(pair_dataset), "--out", str(run),
        "--resolution", "32", "--max-steps", "2", "--batch-size", "2", "--effective-batch", "2",
        "--cpu", "--workers", "0", "--log-every", "1", "--model-id", "vae4-test"])
    assert result.exit_code == 0, result.output
    assert "vae4-test" in result.output
    meta = json.loads((run / "model" / "x2x_model.json").read_text())
    assert meta["resolution"] == 32 and meta["model_id"] == "vae4-test"
    assert (meta["config"]["use_ema"], meta["config"]["rotation_degrees"], meta["config"]["max_grad_norm"]) == (
        True, 2.0, None)  # x2x train's defaults are the research config
    switched = CliRunner().invoke(app, [
        "train", "--base-model", str(base), "--dataset", str(pair_dataset), "--out", str(tmp_path / "off"),
        "--resolution", "32", "--max-steps", "1", "--batch-size", "2", "--effective-batch", "2",
        "--cpu", "--workers", "0", "--no-ema", "--rotation", "0", "--max-grad-norm", "1",
        "--input-profile", "research"])
    assert switched.exit_code == 0, switched.output
    off = json.loads((tmp_path / "off" / "model" / "x2x_model.json").read_text())
    assert (off["config"]["use_ema"], off["config"]["rotation_degrees"], off["config"]["max_grad_norm"]) == (
        False, 0.0, 1.0)
    assert off["input_profile"] == "research"
    with pytest.raises(ValueError, match="multiple of 8"):  # VAE 4 x UNet 2
        train(_cfg(base, pair_dataset, tmp_path / "bad", resolution=36, max_steps=1))


def test_cached_latents_give_the_uncached_loss(tiny_model_dir: Path, pair_dataset: Path, tmp_path: Path) -> None:
    """`cache_latents` samples the same posterior with the same generator: the same loss as encoding
    each step; it refuses hflip; `x2x train --cache-latents` trains and records the setting."""
    import torch
    from diffusers import UNet2DConditionModel

    from editor.training.format import read_samples
    from editor.training.latent_cache import encode_moments
    from editor.training.objective import ip2p_loss
    from editor.training.objective import load_frozen as _load_frozen
    from editor.training.sample_order import step_seed as _step_seed

    frozen = _load_frozen(tiny_model_dir, torch.device("cpu"), torch.float32, None)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_model_dir), subfolder="unet", local_files_only=True).eval()
    samples = read_samples(pair_dataset, split="train")
    moments = encode_moments(frozen.vae, pair_dataset, samples, RES, torch.device("cpu"))
    assert len(moments) == 8 and moments["past0"].shape == (8, RES // 8, RES // 8)  # mean + logvar
    plain = PairDataset(pair_dataset, samples, RES, frozen.tokenizer)
    cached = PairDataset(pair_dataset, samples, RES, frozen.tokenizer, moments)
    keys = [(i, False) for i in range(len(samples))]
    losses = []
    for ds in (plain, cached):
        batch = ds.collate([ds[k] for k in keys])
        gen = torch.Generator().manual_seed(_step_seed(0, 3))
        with torch.no_grad():
            losses.append(float(ip2p_loss(unet, frozen, batch, gen, conditioning_dropout=0.05, device="cpu")))
    assert "current_moments" in cached.collate([cached[k] for k in keys])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4), losses
    with pytest.raises(ValueError, match="hflip"):
        train(_cfg(tiny_model_dir, pair_dataset, tmp_path / "flip", cache_latents=True, hflip=True))

    from typer.testing import CliRunner

    from dicom_node.cli import app

    run = tmp_path / "cached"
    result = CliRunner().invoke(app, [
        "train", "--base-model", str(tiny_model_dir), "--dataset", str(pair_dataset), "--out", str(run),
        "--resolution", str(RES), "--max-steps", "2", "--batch-size", "2", "--effective-batch", "2",
        "--cpu", "--workers", "0", "--cache-latents", "--rotation", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "model" / "x2x_model.json").read_text())["config"]["cache_latents"] is True
    cache = torch.load(run / "latent_cache.pt", weights_only=True)  # kept for resumes: not encoded again
    assert sorted(cache["moments"]) == sorted(moments) and cache["key"]["resolution"] == RES
    assert torch.allclose(cache["moments"]["cur1"], moments["cur1"], atol=1e-5)


@pytest.mark.slow
def test_train_cli_shows_progress_on_a_terminal_only(tiny_model_dir: Path, pair_dataset: Path, tmp_path: Path) -> None:
    """`x2x train` ran for hours with a bar on a pipe (or nothing on a terminal): the bar (steps, loss) is on
    the terminal's stderr; in a pipe stdout has the result line and stderr no bar."""
    import subprocess
    import sys

    from tests.support.terminal import run_on_terminal

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "dicom_node.cli", "train", "--base-model", str(tiny_model_dir), "--dataset",
                str(pair_dataset), "--out", str(out), "--resolution", str(RES), "--max-steps", "3",
                "--batch-size", "2", "--effective-batch", "2", "--cpu", "--workers", "0", "--log-every", "1"]

    code, stdout, terminal = run_on_terminal(cmd(tmp_path / "tty"), timeout=300)
    assert code == 0, terminal[-2000:]
    assert "trained " in stdout
    assert "3/3" in terminal and "loss" in terminal, terminal[-2000:]
    piped = subprocess.run(cmd(tmp_path / "pipe"), capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "trained " in piped.stdout and "3/3" not in piped.stderr
