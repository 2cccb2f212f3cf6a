"""Batched editing (Editor.edit_batch): one UNet call per step for the whole batch, and every image gets
exactly the edit it gets alone (its seed, its prior, its masks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from editor import EditItem, EditParams, SourceImage
from editor.editor import Editor

INSTRUCTIONS = (
    "Add the finding of pleural effusion.",
    "Add the finding of left pneumothorax.",
    "Remove the finding of cardiomegaly.",
    "Add the finding of small right pleural effusion.",
)


@pytest.fixture(scope="module")
def editor(tiny_model_dir: Path) -> Editor:
    return Editor.from_pretrained(tiny_model_dir, device="cpu")


def _source(k: int, height: int = 160, width: int = 144) -> SourceImage:
    """A 12-bit chest-like image, different for each k (lung position and texture)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    shift = 0.03 * k
    lungs = np.exp(-(((xx - 0.3 - shift) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    lungs += np.exp(-(((xx - 0.7 + shift) / 0.14) ** 2 + ((yy - 0.5 - shift) / 0.28) ** 2))
    gray = np.clip(0.85 - 0.6 * lungs + 0.03 * np.sin((31 + 7 * k) * yy), 0, 1)
    stored = np.rint(gray * 4000 + 40).astype(np.uint16)
    return SourceImage(pixels=stored, bits_stored=12, window_center=2048, window_width=4096,
                       patient_orientation=("L", "F"), view_position="PA")


def _items(params: list[EditParams]) -> list[EditItem]:
    return [EditItem(_source(k), INSTRUCTIONS[k % 4], seed=100 + 7 * k, params=p) for k, p in enumerate(params)]


class _UNetCalls:
    """Batch sizes of every UNet forward call."""

    def __init__(self, unet: Any) -> None:
        self.sizes: list[int] = []
        self._handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.sizes.append(int(sample.shape[0]))

    def close(self) -> None:
        self._handle.remove()


def _assert_same_edit(batched: Any, alone: Any) -> None:
    np.testing.assert_allclose(batched.relevance, alone.relevance, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched.guidance, alone.guidance, atol=1e-5, rtol=0)
    assert np.array_equal(batched.mask, alone.mask)
    assert batched.counterfactual.dtype == alone.counterfactual.dtype
    # stored integers: equal, or one unit off where floats ~1e-5 apart round the other way
    diff = np.abs(batched.counterfactual.astype(np.int64) - alone.counterfactual.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    outside = ~alone.mask
    assert np.array_equal(batched.counterfactual[outside], alone.counterfactual[outside])
    assert batched.seed == alone.seed and batched.instruction == alone.instruction


def test_a_batch_of_four_edits_each_image_as_alone_in_one_unet_call_per_step(editor: Editor) -> None:
    steps = 3
    # Same batch key; tau, RSE on/off and the prior stay per image.
    params = [EditParams(steps=steps, resolution=128, tau=0.1),
              EditParams(steps=steps, resolution=128, tau=0.3),
              EditParams(steps=steps, resolution=128, rse=False),
              EditParams(steps=steps, resolution=128, tau=0.05, prior="none")]
    items = _items(params)
    calls = _UNetCalls(editor.model.unet)
    try:
        batched = editor.edit_batch(items)
        batch_calls = list(calls.sizes)
        calls.sizes.clear()
        alone = [editor.edit(it.image, it.instruction, seed=it.seed, params=it.params) for it in items]
        alone_calls = list(calls.sizes)
    finally:
        calls.close()
    # one relevance pass of 2 x 4, then one call of 3 x 4 per DDIM step
    assert batch_calls == [8] + [12] * steps
    assert alone_calls == ([2] + [3] * steps) * 4
    for b, a in zip(batched, alone, strict=True):
        assert not isinstance(b, Exception)
        assert b.provenance["batch_size"] == 4 and a.provenance["batch_size"] == 1
        _assert_same_edit(b, a)
    assert alone[2].mask.all() and not alone[0].mask.all()  # the batch really mixed RSE and plain IP2P
    assert len({b.counterfactual.tobytes() for b in batched}) == 4  # four different edits


def test_batched_model_grid_matches_single_within_float_rounding(editor: Editor) -> None:
    """On the model grid: relevance within 5e-5; decoded images (in [0, 1]) within 1e-4 (measured on CPU:
    relevance <= 1.0e-5 -- the map is min-max normalised, which scales the UNet's ~2e-7 rounding up -- and
    images <= 3e-5 after 3 steps of the tiny random model, whose guidance amplifies that rounding too)."""
    from editor.model_grid import edit_model_grid_batch

    items = _items([EditParams(steps=3, resolution=128)] * 4)
    inputs = [editor._prepare(it).grid_input for it in items]
    batched = edit_model_grid_batch(editor.model, editor._scheduler, inputs)
    for item, b in zip(inputs, batched, strict=True):
        a = edit_model_grid_batch(editor.model, editor._scheduler, [item])[0]
        assert a.image is not None and b.image is not None
        np.testing.assert_allclose(b.relevance_latent, a.relevance_latent, atol=5e-5, rtol=0)
        np.testing.assert_allclose(b.image, a.image, atol=1e-4, rtol=0)
        assert np.array_equal(b.mask, a.mask) and np.array_equal(b.mask_latent, a.mask_latent)


def test_incompatible_items_are_grouped_and_failures_stay_per_item(editor: Editor) -> None:
    base = EditParams(steps=2, resolution=128)
    items = _items([base, base.replace(steps=3), base])
    items.append(EditItem(_source(3), "Add the finding of pleural efusion.", seed=1, params=base))
    calls = _UNetCalls(editor.model.unet)
    try:
        results = editor.edit_batch(items, return_exceptions=True)
    finally:
        calls.close()
    assert isinstance(results[3], Exception) and "efusion" in str(results[3])
    # items 0 and 2 share a batch (2 images), item 1 (other steps) runs on its own
    assert sorted(calls.sizes) == sorted([4, 6, 6, 2, 3, 3, 3])
    alone = editor.edit(items[1].image, items[1].instruction, seed=items[1].seed, params=items[1].params)
    assert not isinstance(results[1], Exception)
    _assert_same_edit(results[1], alone)
    assert results[0].provenance["batch_size"] == 2  # type: ignore[union-attr]
    with pytest.raises(Exception, match="efusion"):
        editor.edit_batch(items)
