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


def test_auto_dtype_on_cuda_is_reduced_precision(tiny_model_dir: Path) -> None:
    from editor import Editor

    editor = Editor.from_pretrained(tiny_model_dir, device="auto", dtype="auto")
    assert editor.model.device.type == "cuda"
    assert str(editor.model.dtype) in ("torch.bfloat16", "torch.float16")
