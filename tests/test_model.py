"""Model loading: local diffusers folder, identity (model id + weights hash), device/dtype, single file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from editor.model import ModelLoadError, describe_model, load_model, resolve_dtype
from editor.tiny import TINY_MODEL_ID


def test_describe_model_reads_id_hash_and_resolution(tiny_model_dir: Path) -> None:
    info = describe_model(tiny_model_dir)
    assert info.model_id == TINY_MODEL_ID
    assert info.kind == "fixture"
    assert info.resolution == 512
    assert info.weights_hash.startswith("sha256:") and len(info.weights_hash) == len("sha256:") + 64
    assert describe_model(tiny_model_dir) == info  # stable (and served from the cache)


def test_weights_hash_follows_the_weights_and_id_falls_back_to_folder_name(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "x2x_model.json").unlink()
    info = describe_model(copy)
    assert info.model_id == "my-model"
    assert info.kind == "diffusers"
    assert info.resolution == 512  # from unet sample_size x VAE downsampling
    assert info.weights_hash == describe_model(tiny_model_dir).weights_hash  # same bytes, same hash
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert describe_model(copy).weights_hash != info.weights_hash


def test_load_model_on_cpu_is_fp32_eval_and_ddim(tiny_model_dir: Path) -> None:
    import torch
    from diffusers import DDIMScheduler

    model = load_model(tiny_model_dir, device="cpu")
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert not model.unet.training and not model.vae.training and not model.text_encoder.training
    assert isinstance(model.scheduler, DDIMScheduler)
    assert model.unet.config.in_channels == 8
    assert model.vae_scale_factor == 8
    assert model.model_id == TINY_MODEL_ID and model.weights_hash == describe_model(tiny_model_dir).weights_hash


def test_dtype_auto_rules() -> None:
    import torch

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError):
        resolve_dtype("float8", torch.device("cpu"))


def test_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model_index.json"):
        describe_model(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        describe_model(tmp_path / "missing")


def test_single_file_needs_a_local_config_folder_and_never_downloads(tmp_path: Path) -> None:
    ckpt = tmp_path / "instructx2x.ckpt"
    ckpt.write_bytes(b"not really a checkpoint")
    (tmp_path / "instructx2x.x2x_model.json").write_text(json.dumps({"model_id": "instructx2x-v1"}))
    info = describe_model(ckpt)
    assert info.model_id == "instructx2x-v1" and info.kind == "single-file"
    with pytest.raises(ModelLoadError, match="single_file_config"):
        load_model(ckpt, device="cpu")
    yaml = tmp_path / "v1-inference.yaml"
    yaml.write_text("model: {}\n")
    with pytest.raises(ModelLoadError, match="config folder"):
        load_model(ckpt, device="cpu", single_file_config=yaml)


def test_save_model_folder_keeps_the_model_id_and_reloads(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from editor.model import save_model_folder

    model = load_model(tiny_model_dir, device="cpu")
    out = save_model_folder(model, tmp_path / "converted")
    info = describe_model(out)
    assert info.model_id == TINY_MODEL_ID and info.kind == "diffusers" and info.resolution == 512
    reloaded = load_model(out, device="cpu")
    for name, tensor in model.unet.state_dict().items():
        assert torch.equal(tensor, reloaded.unet.state_dict()[name]), name


# --- input profile, pinned scheduler, precision ------------------------------------------------------


def test_input_profile_is_declared_by_the_folder_and_defaults_to_research(tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    from editor.demo import demo_model_path

    assert describe_model(tiny_model_dir).input_profile == "windowed-aspect"  # init-tiny declares it
    demo = demo_model_path()
    assert demo is not None and describe_model(demo).input_profile == "windowed-aspect"
    published = tmp_path / "published"  # a diffusers folder as the authors ship it: no x2x_model.json
    shutil.copytree(tiny_model_dir, published)
    (published / "x2x_model.json").unlink()
    assert describe_model(published).input_profile == "research"
    (published / "x2x_model.json").write_text(json.dumps({"model_id": "instructx2x-v2"}))
    assert describe_model(published).input_profile == "research"  # an id alone declares no profile
    (published / "x2x_model.json").write_text(json.dumps({"input_profile": "no-such-profile"}))
    with pytest.raises(ModelLoadError, match="input_profile"):
        describe_model(published)


def test_scheduler_is_pinned_to_the_research_ddim_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "odd-scheduler"
    shutil.copytree(tiny_model_dir, folder)
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["clip_sample"]  # diffusers' default for a missing key is True: x0 clipping silently on
    cfg.update(steps_offset=0, set_alpha_to_one=True)
    cfg_path.write_text(json.dumps(cfg))
    model = load_model(folder, device="cpu")
    config = model.scheduler.config
    assert (config.clip_sample, config.steps_offset, config.set_alpha_to_one) == (False, 1, False)
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert any("clip_sample" in n for n in model.scheduler_notes)
    assert any(n.startswith("steps_offset") for n in model.scheduler_notes)
    sched = type(model.scheduler).from_config(model.scheduler.config)
    sched.set_timesteps(100)
    assert sched.timesteps.tolist() == list(range(991, 0, -10))  # 991 ... 1


def test_research_profile_runs_float16_on_cuda_by_default() -> None:
    import torch

    from editor.profiles import PROJECT_PROFILE, RESEARCH_PROFILE

    # no GPU needed: the research profile never asks the device about bfloat16
    assert resolve_dtype("auto", torch.device("cuda"), RESEARCH_PROFILE) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cuda"), RESEARCH_PROFILE) == torch.bfloat16  # by choice
    assert resolve_dtype("auto", torch.device("cpu"), PROJECT_PROFILE) == torch.float32
