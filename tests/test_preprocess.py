"""Preprocess: display mapping and its exact inverse, model grid, DICOM/PNG sources, the real chest CR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from editor.orientation import Orientation
from editor.preprocess import DisplayMapping, GridTransform, preprocess, stored_range
from editor.source import UnsupportedImageError, source_from_dataset, source_from_file
from editor.types import SourceImage

CASES = [
    # bits, signed, dtype, photometric, shape
    (8, False, np.uint8, "MONOCHROME2", (37, 53)),
    (12, False, np.uint16, "MONOCHROME2", (64, 48)),
    (12, True, np.int16, "MONOCHROME1", (41, 41)),
    (15, False, np.uint16, "MONOCHROME1", (50, 31)),
    (16, False, np.uint16, "MONOCHROME2", (33, 70)),
    (16, True, np.int16, "MONOCHROME1", (29, 44)),
]


def _random_image(bits: int, signed: bool, dtype: type, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    lo, hi = stored_range(bits, signed, np.dtype(dtype))
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize(("bits", "signed", "dtype", "photometric", "shape"), CASES)
@pytest.mark.parametrize("voi", ["window", "window_exact", "sigmoid", "percentile", "voi_lut"])
def test_display_round_trip_inside_window(
    bits: int, signed: bool, dtype: type, photometric: str, shape: tuple[int, int], voi: str
) -> None:
    pixels = _random_image(bits, signed, dtype, shape)
    lo, hi = stored_range(bits, signed, np.dtype(dtype))
    slope, intercept = (1.0, -1024.0) if bits >= 12 else (1.0, 0.0)
    kwargs: dict = dict(pixels=pixels, photometric=photometric, bits_stored=bits, pixel_signed=signed,
                        rescale_slope=slope, rescale_intercept=intercept)
    center = (lo + hi) / 2 * slope + intercept
    width = (hi - lo) * slope * 0.6
    if voi == "window":
        kwargs.update(window_center=center, window_width=width)
    elif voi == "window_exact":
        kwargs.update(window_center=center, window_width=width, voi_lut_function="LINEAR_EXACT")
    elif voi == "sigmoid":
        kwargs.update(window_center=center, window_width=width, voi_lut_function="SIGMOID")
    elif voi == "voi_lut":
        # An identity-slope table over the modality range: one output per input, so exactly invertible.
        first = int(lo * slope + intercept)
        kwargs.update(voi_lut=np.arange(hi - lo + 1, dtype=np.float64), voi_lut_first_mapped=first)
    src = SourceImage(**kwargs)
    mapping = DisplayMapping.from_source(src)
    display = mapping.to_display(pixels)
    assert display.dtype == np.float32 and display.shape == shape
    assert display.min() >= 0.0 and display.max() <= 1.0
    back = mapping.to_stored(display)
    assert back.dtype == pixels.dtype
    assert back.min() >= lo and back.max() <= hi
    # Inside the window the inverse is exact; outside it saturates to the window edge (documented).
    modality = pixels.astype(np.float64) * slope + intercept
    if voi in ("window", "window_exact"):
        inside = np.abs(modality - center) < width / 2 - 1
    elif voi == "sigmoid":
        inside = np.abs(modality - center) < width  # the sigmoid keeps float32 precision near the centre
    else:
        inside = (display > 0.0) & (display < 1.0)
    assert inside.sum() > pixels.size // 4
    np.testing.assert_array_equal(back[inside], pixels[inside])
    for edge in (0.0, 1.0):  # saturated pixels all come back as one stored value: the window edge
        saturated = display == edge
        if voi in ("window", "window_exact") and saturated.any():
            assert np.unique(back[saturated]).size == 1


def test_monochrome1_is_inverted_so_bone_is_bright() -> None:
    pixels = np.array([[0, 4095]], dtype=np.uint16)
    m2 = DisplayMapping.from_source(SourceImage(pixels, "MONOCHROME2", 12, window_center=2048, window_width=4096))
    m1 = DisplayMapping.from_source(SourceImage(pixels, "MONOCHROME1", 12, window_center=2048, window_width=4096))
    assert m2.to_display(pixels)[0, 0] == 0.0 and m2.to_display(pixels)[0, 1] == 1.0
    assert m1.to_display(pixels)[0, 0] == 1.0 and m1.to_display(pixels)[0, 1] == 0.0
    assert m1.describe()["photometric_inversion"] is True


def test_linear_window_matches_dicom_definition() -> None:
    # PS3.3 C.11.2.1.2.1 with c = 2048, w = 4096: x <= c-0.5-(w-1)/2 -> 0; x > c-0.5+(w-1)/2 -> 1.
    m = DisplayMapping.from_source(SourceImage(np.zeros((1, 1), np.uint16), bits_stored=12,
                                               window_center=2048, window_width=4096))
    x = np.array([0, 1, 2047, 4095], dtype=np.uint16)
    expected = np.clip((x - 2047.5) / 4095 + 0.5, 0, 1)
    np.testing.assert_allclose(m.to_display(x), expected, atol=1e-7)
    assert m.to_display(np.array([0]))[0] == 0.0 and m.to_display(np.array([4095]))[0] == 1.0


def test_modality_lut_round_trip() -> None:
    table = np.arange(0, 4096 * 2, 2, dtype=np.float64)  # doubles the stored value
    pixels = _random_image(12, False, np.uint16, (20, 30))
    src = SourceImage(pixels, "MONOCHROME2", 12, modality_lut=table, window_center=4096, window_width=8192)
    mapping = DisplayMapping.from_source(src)
    assert mapping.describe()["modality"] == "lut"
    np.testing.assert_array_equal(mapping.to_stored(mapping.to_display(pixels)), pixels)


def test_percentile_window_is_recorded_and_used_without_window() -> None:
    pixels = _random_image(12, False, np.uint16, (40, 40))
    mapping = DisplayMapping.from_source(SourceImage(pixels, bits_stored=12))
    assert mapping.voi_kind == "percentile"
    assert "percentile" in mapping.notes[0]
    display = mapping.to_display(pixels)
    assert 0.004 < (display == 0).mean() < 0.02 and 0.004 < (display == 1).mean() < 0.02


@pytest.mark.parametrize(
    ("shape", "resolution", "model"),
    [((1955, 1841), 512, (544, 512)), ((512, 512), 512, (512, 512)), ((37, 53), 64, (64, 88)),
     ((300, 200), 64, (96, 64)), ((7, 1000), 16, (16, 2288))],
)
def test_grid_rule(shape: tuple[int, int], resolution: int, model: tuple[int, int]) -> None:
    grid = GridTransform.for_shape(shape, resolution)
    assert grid.model_shape == model
    assert grid.latent_shape == (model[0] // 8, model[1] // 8)
    assert min(grid.model_shape) == resolution and all(s % 8 == 0 for s in grid.model_shape)


def test_grid_resize_round_trip_shapes_and_values() -> None:
    grid = GridTransform.for_shape((37, 53), 64)
    ramp = np.tile(np.linspace(0, 1, 53, dtype=np.float32), (37, 1))
    model = grid.to_model(ramp)
    assert model.shape == (64, 88) and model.dtype == np.float32
    back = grid.to_native(model)
    assert back.shape == (37, 53)
    assert np.abs(back - ramp)[:, 2:-2].max() < 0.02  # smooth data survives up/down sampling
    mask = np.zeros((37, 53), bool)
    mask[10:20, 5:30] = True
    mm = grid.to_model(mask, order="nearest")
    assert mm.dtype == bool and mm.shape == (64, 88)
    np.testing.assert_array_equal(grid.to_native(mm, order="nearest"), mask)
    const = np.full((37, 53), 0.25, np.float32)
    np.testing.assert_allclose(grid.to_model(const, order="area"), 0.25, atol=1e-6)
    with pytest.raises(ValueError):
        GridTransform.for_shape((10, 10), 60)


def test_preprocess_outputs_and_tensor() -> None:
    pixels = _random_image(12, False, np.uint16, (50, 70))
    pre = preprocess(SourceImage(pixels, "MONOCHROME1", 12, window_center=2048, window_width=4096), 64)
    assert pre.display_native.shape == (50, 70)
    assert pre.model_image.shape == pre.grid.model_shape == (64, 88)
    t = pre.model_rgb_tensor()
    assert tuple(t.shape) == (1, 3, 64, 88)
    assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0
    assert bool((t[0, 0] == t[0, 2]).all())


def _dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    return ds


def test_source_from_dataset_fields_and_multiframe_rle(tmp_path: Path) -> None:
    frames = np.stack([_random_image(12, False, np.uint16, (24, 36), seed=s) for s in range(3)])
    ds = _dataset(frames, "MONOCHROME1", frames=3)
    ds.WindowCenter = [2048, 1000]
    ds.WindowWidth = [4096, 500]
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PatientOrientation = ["R", "F"]
    ds.ViewPosition = "AP"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.compress(RLELossless)  # decoding must go through pydicom's pixel handling
    path = tmp_path / "mf.dcm"
    ds.save_as(path, enforce_file_format=True)
    src = source_from_file(path)
    np.testing.assert_array_equal(src.pixels, frames[0])
    assert (src.photometric, src.bits_stored, src.pixel_signed) == ("MONOCHROME1", 12, False)
    assert (src.window_center, src.window_width, src.rescale_intercept) == (2048.0, 4096.0, -1024.0)
    assert src.patient_orientation == ("R", "F") and src.view_position == "AP"
    assert src.imager_pixel_spacing == (0.2, 0.2)
    assert Orientation.from_source(src).image_side("left") == "image_left"


def test_unsupported_images_raise(tmp_path: Path) -> None:
    colour = _dataset(np.zeros((4, 4), np.uint16))
    colour.PhotometricInterpretation = "RGB"
    colour.SamplesPerPixel = 3
    with pytest.raises(UnsupportedImageError):
        source_from_dataset(colour)
    no_pixels = _dataset(np.zeros((4, 4), np.uint16))
    del no_pixels.PixelData
    with pytest.raises(UnsupportedImageError):
        source_from_dataset(no_pixels)
    np.save(tmp_path / "vol.npy", np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(UnsupportedImageError):
        source_from_file(tmp_path / "vol.npy")


def test_png_sources_use_identity_window(tmp_path: Path) -> None:
    from PIL import Image

    grey = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    src = source_from_file(tmp_path / "g.png")
    assert src.photometric == "MONOCHROME2" and src.pixels.dtype == np.uint8
    mapping = DisplayMapping.from_source(src)
    np.testing.assert_allclose(mapping.to_display(grey), grey / 255.0, atol=1e-6)
    np.testing.assert_array_equal(mapping.to_stored(mapping.to_display(grey)), grey)
    g16 = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    src16 = source_from_file(tmp_path / "g16.png")
    np.testing.assert_array_equal(src16.pixels, g16)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(UnsupportedImageError):
        source_from_file(tmp_path / "c.png")


def test_real_chest_cr_round_trip(chest_cr_path: Path) -> None:
    ds = pydicom.dcmread(chest_cr_path)
    src = source_from_dataset(ds)
    assert (src.photometric, src.bits_stored, src.shape) == ("MONOCHROME1", 15, (1955, 1841))
    pre = preprocess(src, 512)
    assert pre.grid.model_shape == (544, 512)
    back = pre.mapping.to_stored(pre.display_native)
    np.testing.assert_array_equal(back, src.pixels)  # every stored value lies inside the 15000/30000 window
    # MONOCHROME1 inverted: the lung fields (mid-height, a quarter in from each side) are darker than
    # the spine column in the middle of the image.
    h, w = pre.model_image.shape
    lungs = np.r_[pre.model_image[h // 3: h // 2, w // 5: w // 3].ravel(),
                  pre.model_image[h // 3: h // 2, 2 * w // 3: 4 * w // 5].ravel()]
    spine = pre.model_image[h // 3: h // 2, w // 2 - 10: w // 2 + 10]
    assert lungs.mean() < spine.mean() - 0.1
    orientation = Orientation.from_source(src)
    assert orientation.patient_left_on_image_right and "L\\F" in orientation.provenance


# --- input profiles: the research checkpoint's square, histogram-equalised input and its inverse --------


def test_research_grid_is_square_whatever_the_aspect() -> None:
    assert GridTransform.for_shape((1955, 1841), 512, square=True).model_shape == (512, 512)
    assert GridTransform.for_shape((300, 200), 64, square=True).model_shape == (64, 64)
    assert GridTransform.for_shape((1955, 1841), 512).model_shape == (544, 512)  # this project's profile


def test_equalisation_flattens_the_histogram_and_inverts_exactly(chest_cr_path: Path) -> None:
    from editor.profiles import Equalisation

    display = DisplayMapping.from_source(source_from_file(chest_cr_path)).to_display(
        source_from_file(chest_cr_path).pixels)
    eq = Equalisation.from_image(display)
    out = eq.forward(display)
    np.testing.assert_allclose(np.percentile(out, np.arange(10, 100, 10)), np.arange(0.1, 1.0, 0.1), atol=0.01)
    assert np.all(np.diff(eq.knots_y) > 0)  # strictly increasing: a true inverse exists
    assert np.abs(eq.inverse(out) - display).max() < 1e-4
    # an equalisation of an already flat histogram is (nearly) the identity
    ramp = np.linspace(0, 1, 100_000, dtype=np.float32)
    assert np.abs(Equalisation.from_image(ramp).forward(ramp) - ramp).max() < 2e-3


def test_research_profile_on_the_real_cr_and_the_way_back(chest_cr_path: Path) -> None:
    from editor.profiles import PROJECT_PROFILE, RESEARCH_PROFILE

    src = source_from_file(chest_cr_path)
    research = preprocess(src, 512, RESEARCH_PROFILE)
    project = preprocess(src, 512, PROJECT_PROFILE)
    assert research.model_image.shape == (512, 512) and project.model_image.shape == (544, 512)
    assert research.describe()["profile"] == "research" and research.equalisation is not None
    # the model sees the equalised image; the anatomy is found on the plain display image
    assert abs(float(np.median(research.model_image)) - 0.5) < 0.03
    assert research.anatomy_image is not None
    assert np.abs(research.anatomy_image - research.grid.to_model(research.display_native)).max() < 1e-5
    # the way back: inverse resize + inverse curve lose no more than the resize alone does
    err_research = np.median(np.abs(research.to_display(research.model_image) - research.display_native))
    err_project = np.median(np.abs(project.to_display(project.model_image) - project.display_native))
    assert err_research < 1.2 * err_project + 1e-4 and err_research < 0.01
    back = research.mapping.to_stored(research.to_display(research.model_image))
    width = research.mapping.window_width
    assert np.median(np.abs(back.astype(np.int64) - src.pixels.astype(np.int64))) < 0.01 * width
