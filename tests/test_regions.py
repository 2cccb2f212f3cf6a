"""Anatomy and region prior: classical segmenter on a phantom and on the real chest CR, laterality from
orientation, location narrowing, fallbacks, paper masks, the plug-in segmenter interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from editor.anatomy import Anatomy, ClassicalSegmenter, dilate, get_segmenter, register_segmenter, template_anatomy
from editor.instructions import parse_instruction
from editor.orientation import Orientation
from editor.preprocess import preprocess
from editor.regions import build_prior
from editor.source import source_from_file

STANDARD = Orientation.from_attributes(("L", "F"), "PA")
FLIPPED = Orientation.from_attributes(("R", "F"), "PA")


def phantom(h: int = 160, w: int = 144, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A simple PA chest drawing (bone bright): dark outside air, body, two dark lungs, a bright heart
    to the image right of the midline, bright below the diaphragm; returns image and ground truth."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.full((h, w), 0.05)
    body = (np.abs(xx - 0.5) < 0.42) & (yy > 0.05)
    img[body] = 0.55
    truth: dict[str, np.ndarray] = {}
    for side, cx in (("image_left", 0.3), ("image_right", 0.7)):
        lung = (((xx - cx) / 0.15) ** 2 + ((yy - 0.72) / 0.58) ** 2 <= 1.0) & (yy < 0.72) & (yy > 0.14)
        truth[side] = lung
        img[lung] = 0.15
    heart = ((xx - 0.56) / 0.16) ** 2 + ((yy - 0.62) / 0.11) ** 2 <= 1.0
    img[heart] = 0.65
    truth["heart"] = heart
    img[(yy >= 0.72) & body] = 0.6
    img = ndi.gaussian_filter(img, 1.0) + np.random.default_rng(seed).normal(0, 0.01, (h, w))
    return np.clip(img, 0, 1).astype(np.float32), truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    r, c = np.nonzero(mask)
    return float(r.mean()), float(c.mean())


def _mass_on_image_right(prior: np.ndarray) -> float:
    w = prior.shape[1]
    return float(prior[:, w // 2:].sum() / prior.sum())


# --- segmenter --------------------------------------------------------------------------------------


def test_classical_segmenter_on_phantom() -> None:
    img, truth = phantom()
    anatomy = ClassicalSegmenter().segment(img)
    assert anatomy.quality["method"] == "classical"
    for side in ("image_left", "image_right"):
        lung = anatomy.masks[f"lung_{side}"]
        # The filled field includes the part of the lung the heart hides, so compare with truth.
        assert _iou(lung, truth[side]) > 0.7, side
        upper, middle, lower = (_centroid(anatomy.masks[f"{z}_{side}"])[0] for z in ("upper", "middle", "lower"))
        assert upper < middle < lower
        apex_r, _ = _centroid(anatomy.masks[f"apex_{side}"])
        cp_r, cp_c = _centroid(anatomy.masks[f"cp_angle_{side}"])
        lung_r, lung_c = _centroid(lung)
        assert apex_r < lung_r < cp_r
        assert (cp_c < lung_c) if side == "image_left" else (cp_c > lung_c)  # lateral corner
        for key in ("hilum", "lateral_margin"):
            assert anatomy.masks[f"{key}_{side}"].any(), key
    hr, hc = _centroid(anatomy.masks["heart"])
    tr, tc = _centroid(truth["heart"])
    assert abs(hr - tr) < 0.1 * img.shape[0] and abs(hc - tc) < 0.1 * img.shape[1]
    assert _centroid(anatomy.masks["lung_image_left"])[1] < hc < _centroid(anatomy.masks["lung_image_right"])[1]


def test_segmenter_keeps_the_callers_grid() -> None:
    img, _ = phantom(h=600, w=520)  # larger than the working size: masks come back on this grid
    anatomy = ClassicalSegmenter().segment(img)
    assert all(m.shape == (600, 520) and m.dtype == bool for m in anatomy.masks.values())
    assert anatomy.quality["method"] == "classical"


def test_template_fallback_is_recorded() -> None:
    flat = np.full((128, 128), 0.5, np.float32)
    anatomy = ClassicalSegmenter().segment(flat)
    assert anatomy.quality["method"] == "template"
    assert any("template" in n for n in anatomy.quality["notes"])
    prior = build_prior(flat, parse_instruction("Add the finding of pleural effusion."), STANDARD)
    assert any("template" in n for n in prior.notes)
    assert 0.0 < prior.mask.mean() < 0.5  # template regions, not the whole image


def test_one_lung_found_is_mirrored() -> None:
    img, truth = phantom()
    img[truth["image_right"]] = 0.62  # whited-out right-hand lung (e.g. a large effusion)
    anatomy = ClassicalSegmenter().segment(img)
    assert anatomy.quality["method"] == "classical+mirror"
    assert _iou(anatomy.masks["lung_image_right"], truth["image_right"]) > 0.5


def test_segmenter_registry() -> None:
    with pytest.raises(ValueError):
        get_segmenter("no-such-segmenter")

    class TemplateOnly:
        name = "template-only"

        def segment(self, image01: np.ndarray) -> Anatomy:
            return template_anatomy(image01.shape, reason="test plug-in")

    register_segmenter("template-only", TemplateOnly)
    seg = get_segmenter("template-only")
    img, _ = phantom()
    prior = build_prior(img, parse_instruction("Add the finding of cardiomegaly."), STANDARD, segmenter=seg)
    assert prior.anatomy_quality["method"] == "template"


# --- region prior -----------------------------------------------------------------------------------


def test_laterality_follows_orientation_on_phantom() -> None:
    img, _ = phantom()
    parsed = parse_instruction("Add the finding of left pleural effusion.")
    standard = build_prior(img, parsed, STANDARD)
    flipped = build_prior(img, parsed, FLIPPED)
    assert _mass_on_image_right(standard.mask) > 0.95
    assert _mass_on_image_right(flipped.mask) < 0.05
    assert "image_right" in standard.laterality and "image_left" in flipped.laterality
    # Effusion: lower zone and costophrenic angle, nothing in the upper third.
    assert standard.mask[: img.shape[0] // 3].max() == 0.0
    assert standard.source == "anatomy"


def test_prior_is_soft_bounded_and_zero_outside() -> None:
    img, _ = phantom()
    parsed = parse_instruction("Add the finding of right pneumothorax.")
    prior = build_prior(img, parsed, STANDARD)
    m = prior.mask
    assert m.dtype == np.float32 and m.min() >= 0.0 and m.max() == 1.0
    assert ((m > 0) & (m < 1)).sum() > 0  # soft edge
    anatomy = get_segmenter().segment(img)
    region = anatomy.masks["apex_image_left"] | anatomy.masks["lateral_margin_image_left"] | anatomy.masks[
        "upper_image_left"]
    far = ~dilate(region, 0.06 * max(img.shape))
    assert m[far].max() == 0.0


def test_location_words_narrow_the_prior() -> None:
    img, _ = phantom()
    upper = build_prior(img, parse_instruction("Add the finding of pneumonia in the right upper lung."), STANDARD)
    lower = build_prior(img, parse_instruction("Add the finding of pneumonia in the right lower lung."), STANDARD)
    whole = build_prior(img, parse_instruction("Add the finding of right pneumonia."), STANDARD)
    assert _centroid(upper.mask > 0.5)[0] < _centroid(whole.mask > 0.5)[0] < _centroid(lower.mask > 0.5)[0]
    assert upper.mask.sum() < 0.6 * whole.mask.sum()
    assert _mass_on_image_right(upper.mask) < 0.05  # patient right = image left on a standard PA
    bilateral = build_prior(img, parse_instruction("Add the finding of bilateral pleural effusion."), STANDARD)
    assert 0.3 < _mass_on_image_right(bilateral.mask) < 0.7


def test_large_severity_widens_the_effusion_prior() -> None:
    img, _ = phantom()
    small = build_prior(img, parse_instruction("Add the finding of small left pleural effusion."), STANDARD)
    large = build_prior(img, parse_instruction("Add the finding of large left pleural effusion."), STANDARD)
    change = build_prior(img, parse_instruction("Change the level of left pleural effusion from small to large."),
                         STANDARD)
    assert large.mask.sum() > 1.3 * small.mask.sum()
    np.testing.assert_array_equal(change.mask, large.mask)
    assert "middle_zone" in large.regions[0] and "middle_zone" not in small.regions[0]


def test_cardiomegaly_prior_covers_heart_and_borders() -> None:
    img, truth = phantom()
    prior = build_prior(img, parse_instruction("Remove the finding of cardiomegaly."), STANDARD)
    assert prior.mask[truth["heart"]].mean() > 0.8
    assert prior.mask[: img.shape[0] // 4].max() == 0.0  # nothing at the apices


def test_broad_field_findings_are_recorded_not_silent() -> None:
    img, _ = phantom()
    prior = build_prior(img, parse_instruction("Add the findings of air collection and left pleural effusion."),
                        STANDARD)
    assert prior.source == "anatomy"  # a rule, not a fallback
    assert prior.broad_field == ["air collection"]
    assert any("air collection" in r and "broad field" in r for r in prior.regions)
    assert any("air collection" in n and "broad field" in n for n in prior.notes)
    assert set(prior.per_finding) == {"air collection", "pleural effusion"}
    np.testing.assert_array_equal(prior.mask, np.maximum(*prior.per_finding.values()))
    assert prior.per_finding["air collection"].mean() < 0.7  # lungs, heart and mediastinum: not all ones


def test_every_finding_has_a_region_rule_with_pixels() -> None:
    from editor.vocabulary import FINDINGS

    img, _ = phantom()
    for name in FINDINGS:
        for op in ("Add", "Remove"):
            prior = build_prior(img, parse_instruction(f"{op} the finding of {name}."), STANDARD)
            assert prior.source == "anatomy", (op, name, prior.notes)
            assert 0.0 < prior.mask.mean() < 0.8, (op, name)


def test_finding_whose_regions_are_empty_falls_back_with_a_trace() -> None:
    class NoMediastinum:
        name = "no-mediastinum"

        def segment(self, image01: np.ndarray) -> Anatomy:
            anatomy = ClassicalSegmenter().segment(image01)
            anatomy.masks["mediastinum"] = np.zeros_like(anatomy.masks["mediastinum"])
            return anatomy

    img, _ = phantom()
    prior = build_prior(img, parse_instruction("Add the findings of pneumomediastinum and left pleural effusion."),
                        STANDARD, segmenter=NoMediastinum())
    assert prior.source == "fallback"
    assert any("pneumomediastinum" in n and "lungs + heart" in n for n in prior.notes)
    assert prior.per_finding["pneumomediastinum"].mean() < 0.7  # lungs + heart, not an all-ones mask


def test_none_source_is_all_ones_and_recorded() -> None:
    img, _ = phantom()
    prior = build_prior(img, parse_instruction("Add the finding of edema."), STANDARD, source="none")
    assert prior.source == "none" and prior.mask.min() == 1.0 and prior.notes


def test_paper_masks_are_resized_and_missing_ones_fall_back(tmp_path: Path) -> None:
    box = np.zeros((512, 512), np.float32)
    box[300:480, 280:460] = 1.0
    np.save(tmp_path / "pseudo_mask_Effusion.npy", box)
    img, _ = phantom()
    prior = build_prior(img, parse_instruction("Add the finding of pleural effusion."), STANDARD,
                        source="paper", paper_dir=tmp_path)
    assert prior.source == "paper" and prior.mask.shape == img.shape
    h, w = img.shape
    assert prior.mask[int(0.75 * h), int(0.72 * w)] == 1.0 and prior.mask[int(0.2 * h), int(0.2 * w)] == 0.0
    missing = build_prior(img, parse_instruction("Add the finding of cardiomegaly."), STANDARD,
                          source="paper", paper_dir=tmp_path)
    assert missing.source == "fallback"
    assert any("pseudo_mask_Cardiomegaly.npy" in n for n in missing.notes)
    with pytest.raises(ValueError):
        build_prior(img, parse_instruction("Add the finding of edema."), STANDARD, source="paper")


def test_lateral_view_does_not_guess_sides() -> None:
    img, _ = phantom()
    lateral = Orientation.from_attributes(None, "LL")
    assert not lateral.laterality_known
    prior = build_prior(img, parse_instruction("Add the finding of left pleural effusion."), lateral)
    assert 0.3 < _mass_on_image_right(prior.mask) < 0.7
    assert any("cannot be placed" in n for n in prior.notes)


def test_feet_up_orientation_flips_the_anatomy() -> None:
    img, _ = phantom()
    feet_up = Orientation.from_attributes(("L", "H"), None)
    assert not feet_up.patient_head_on_image_top
    prior = build_prior(np.flipud(img).copy(), parse_instruction("Add the finding of pleural effusion."), feet_up)
    h = img.shape[0]
    assert prior.mask[: h // 2].sum() > 0.9 * prior.mask.sum()  # the bases are now at the top


def test_orientation_rules() -> None:
    assert Orientation.from_attributes(("L", "F"), None).image_side("left") == "image_right"
    assert Orientation.from_attributes(("R", "F"), None).image_side("left") == "image_left"
    assert Orientation.from_attributes(None, "AP").image_side("right") == "image_left"
    assumed = Orientation.from_attributes(None, None)
    assert assumed.patient_left_on_image_right and "assumed standard" in assumed.provenance


# --- the real chest CR ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest_cr(chest_cr_path: Path) -> tuple[np.ndarray, Orientation]:
    src = source_from_file(chest_cr_path)
    return preprocess(src, 256).model_image, Orientation.from_source(src)


def test_real_cr_anatomy_is_plausible(chest_cr: tuple[np.ndarray, Orientation]) -> None:
    img, _ = chest_cr
    h, w = img.shape
    anatomy = ClassicalSegmenter().segment(img)
    assert anatomy.quality["method"] == "classical", anatomy.quality
    left, right, heart = (anatomy.masks[k] for k in ("lung_image_left", "lung_image_right", "heart"))
    for lung in (left, right):
        assert 0.08 < lung.mean() < 0.3
        r0, r1 = np.flatnonzero(lung.any(axis=1))[[0, -1]]
        assert r0 < 0.2 * h and 0.6 * h < r1 < 0.85 * h  # apex near the top, base at the diaphragm
    assert _centroid(left)[1] < 0.45 * w and _centroid(right)[1] > 0.55 * w
    hr, hc = _centroid(heart)
    assert _centroid(left)[1] < hc < _centroid(right)[1]
    assert 0.45 * h < hr < 0.75 * h
    assert 0.03 < heart.mean() < 0.2
    # Lungs are darker than the mediastinum on the display image (bone bright).
    assert img[left | right].mean() < img[anatomy.masks["mediastinum"] & ~heart].mean()


def test_real_cr_priors_lie_in_the_chest(chest_cr: tuple[np.ndarray, Orientation]) -> None:
    img, orientation = chest_cr
    anatomy = get_segmenter().segment(img)
    chest = dilate(anatomy.lungs() | anatomy.masks["heart"], 0.08 * max(img.shape))
    for text in ("Add the finding of pleural effusion.", "Remove the finding of cardiomegaly.",
                 "Add the finding of pneumothorax.", "Add the findings of edema and lung opacity."):
        prior = build_prior(img, parse_instruction(text), orientation)
        assert prior.source == "anatomy"
        assert prior.mask[chest].sum() > 0.97 * prior.mask.sum(), text
        assert 0.01 < prior.mask.mean() < 0.6, text
    # Absolute bounds read off RG1_UNCR.dcm by eye (fractions of the image): the costophrenic angles
    # sit at ~0.75 of the height, the heart's centre at ~0.6 height, ~0.55 width.
    h, w = img.shape
    effusion = build_prior(img, parse_instruction("Add the finding of pleural effusion."), orientation).mask
    er, _ = _centroid(effusion > 0.5)
    assert 0.55 * h < er < 0.8 * h
    assert effusion[: int(0.35 * h)].max() == 0.0
    heart = build_prior(img, parse_instruction("Add the finding of cardiomegaly."), orientation).mask
    hr, hc = _centroid(heart > 0.5)
    assert 0.45 * h < hr < 0.75 * h and 0.35 * w < hc < 0.65 * w


def test_real_cr_laterality(chest_cr: tuple[np.ndarray, Orientation]) -> None:
    img, orientation = chest_cr
    assert orientation.patient_left_on_image_right  # RG1_UNCR.dcm: PatientOrientation L\F
    parsed = parse_instruction("Add the finding of left pleural effusion.")
    assert _mass_on_image_right(build_prior(img, parsed, orientation).mask) > 0.95
    assert _mass_on_image_right(build_prior(img, parsed, FLIPPED).mask) < 0.05


# --- the real chest CR at the demo model's 128-px grid and at 512 px ----------------------------------


@pytest.fixture(scope="module", params=[128, 512], ids=["128px", "512px"])
def chest_cr_grid(request: pytest.FixtureRequest, chest_cr_path: Path) -> tuple[np.ndarray, Orientation]:
    src = source_from_file(chest_cr_path)
    return preprocess(src, request.param).model_image, Orientation.from_source(src)


def test_real_cr_base_band_stays_on_the_diaphragm(chest_cr_grid: tuple[np.ndarray, Orientation]) -> None:
    """At 128 px the image-right apex used to merge with the air above the shoulder, and the band around
    the hemidiaphragm then climbed the lateral chest wall up to the apex."""
    from editor.regions import region_mask

    img, orientation = chest_cr_grid
    h, w = img.shape
    anatomy = get_segmenter().segment(img)
    for side in ("image_left", "image_right"):
        lung = anatomy.masks[f"lung_{side}"]
        cols = np.flatnonzero(lung.any(axis=0))
        assert 0.05 * w < cols[0] and cols[-1] < 0.92 * w, (side, cols[[0, -1]] / w)  # not the image corner
        rows = np.flatnonzero(lung.any(axis=1))
        band = region_mask(anatomy, "subdiaphragm", side, orientation)
        band_rows = np.flatnonzero(band.any(axis=1))
        assert band_rows[0] > rows[0] + 0.6 * (rows[-1] - rows[0]), side  # the lower part only
    effusion = build_prior(img, parse_instruction("Add the finding of pleural effusion."), orientation).mask
    assert effusion[: int(0.4 * h)].max() == 0.0


def test_real_cr_heart_reaches_the_cardiac_apex(chest_cr_grid: tuple[np.ndarray, Orientation]) -> None:
    """RG1_UNCR.dcm's left heart border runs down and out to the apex at about (0.73 h, 0.76 w), read off
    the image by eye; the old centred ellipse stopped about 0.12 w short of it (~20 px at 128 px)."""
    img, orientation = chest_cr_grid
    h, w = img.shape
    heart = get_segmenter().segment(img).masks["heart"]
    assert heart[int(0.70 * h), int(0.66 * w)]  # inside the lower left border
    assert not heart[int(0.45 * h), int(0.80 * w)] and not heart[int(0.60 * h), int(0.20 * w)]  # lungs
    prior = build_prior(img, parse_instruction("Add the finding of cardiomegaly."), orientation).mask
    assert prior[int(0.73 * h), int(0.76 * w)] >= 0.5  # heart + borders cover the apex


def _with_left_effusion(img: np.ndarray, height: float) -> tuple[np.ndarray, np.ndarray]:
    """The healthy CR with fluid filling the lowest `height` of the image-right (patient-left) lung,
    meniscus climbing the lateral wall, at the density below the diaphragm; returns image and fluid."""
    h, w = img.shape
    lung = get_segmenter().segment(img).masks["lung_image_right"]
    rows, cols = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    top, bottom, medial, lateral = rows[0], rows[-1], cols[0], cols[-1]
    rr, cc = np.mgrid[0:h, 0:w]
    surface = bottom - height * (bottom - top) - 0.06 * h * np.clip((cc - medial) / (lateral - medial), 0, 1) ** 2
    fluid = lung & (rr >= surface)
    level = float(np.median(img[int(bottom + 0.05 * h): int(bottom + 0.15 * h), medial:lateral]))
    soft = ndi.gaussian_filter(fluid.astype(np.float32), 0.006 * h)
    return np.clip(img * (1 - soft) + level * soft, 0, 1).astype(np.float32), fluid


@pytest.mark.parametrize("height", [0.3, 0.45])
def test_real_cr_remove_effusion_covers_the_fluid(chest_cr_grid: tuple[np.ndarray, Orientation],
                                                  height: float) -> None:
    """The anatomy of an image that shows the effusion stops at the fluid; "Remove" must cover the fluid
    (the hemithorax), still on the patient's left only."""
    img, orientation = chest_cr_grid
    sick, fluid = _with_left_effusion(img, height)
    prior = build_prior(sick, parse_instruction("Remove the finding of left pleural effusion."), orientation)
    covered = float((prior.mask[fluid] >= 0.5).mean())
    assert covered > 0.97, covered
    assert _mass_on_image_right(prior.mask) > 0.95
    assert any("hemithorax" in r for r in prior.regions)
    add = build_prior(img, parse_instruction("Add the finding of left pleural effusion."), orientation)
    assert add.mask.sum() < prior.mask.sum()  # "Add" keeps to the lower zone and angles
