"""CUDA smoke tests: the editor on a GPU in reduced precision. Skipped cleanly without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_edit_on_cuda_is_deterministic_and_keeps_outside_pixels(
    tiny_model_dir: Path, chest_cr_path: Path, dtype: str
) -> None:
    from editor import Editor, EditParams, source_from_file

    editor = Editor.from_pretrained(tiny_model_dir, device="cuda", dtype=dtype)
    assert editor.model.device.type == "cuda" and str(editor.model.dtype) == f"torch.{dtype}"
    src = source_from_file(chest_cr_path)
    params = EditParams(steps=4, resolution=256)
    a = editor.edit(src, "Add the finding of left pleural effusion.", seed=5, params=params)
    b = editor.edit(src, "Add the finding of left pleural effusion.", seed=5, params=params)
    c = editor.edit(src, "Add the finding of left pleural effusion.", seed=6, params=params)
    assert np.array_equal(a.counterfactual, b.counterfactual)
    assert not np.array_equal(a.counterfactual, c.counterfactual)
    assert a.counterfactual.dtype == src.pixels.dtype and a.counterfactual.shape == src.shape
    assert np.isfinite(a.guidance).all() and a.guidance.min() >= 0 and a.guidance.max() <= 1
    outside = ~a.mask
    assert np.array_equal(a.counterfactual[outside], src.pixels[outside])
    assert a.provenance["device"].startswith("cuda")
    assert a.provenance["precision"] == {"unet": dtype, "latents": "float32", "relevance": "float32"}


def test_auto_dtype_on_cuda_is_float16_for_both_profiles(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from editor import Editor

    editor = Editor.from_pretrained(tiny_model_dir, device="auto", dtype="auto")
    assert editor.model.device.type == "cuda"
    assert editor.model.profile.name == "windowed-aspect" and str(editor.model.dtype) == "torch.float16"
    published = tmp_path / "published"  # no x2x_model.json: the research profile
    shutil.copytree(tiny_model_dir, published)
    (published / "x2x_model.json").unlink()
    research = Editor.from_pretrained(published, device="auto", dtype="auto")
    assert research.model.profile.name == "research" and str(research.model.dtype) == "torch.float16"


def test_relevance_in_float16_on_cuda_tracks_float32() -> None:
    from editor import Editor, EditParams
    from editor.demo import demo_model_path

    demo = demo_model_path()
    assert demo is not None
    half = Editor.from_pretrained(demo, device="cuda", dtype="float16")
    full = Editor.from_pretrained(demo, device="cuda", dtype="float32")
    image = torch.zeros((1, 3, 128, 128))
    image[..., 40:100, 20:60] = 0.5
    zeros = np.zeros((128, 128), np.float32)  # relevance only: an empty mask skips the denoising
    for seed in range(3):
        a = full.edit_model_grid(image, "Add the finding of left pleural effusion.", zeros, seed=seed,
                                 params=EditParams()).relevance_latent
        b = half.edit_model_grid(image, "Add the finding of left pleural effusion.", zeros, seed=seed,
                                 params=EditParams()).relevance_latent
        assert float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) >= 0.99
