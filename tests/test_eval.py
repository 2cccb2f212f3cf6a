"""`x2x eval`: numbers on tiny synthetic sets whose answers are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editor.training.evaluate import evaluate, ssim_map, to_json

H = W = 64


def _smooth_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    img = 0.3 + 0.3 * np.exp(-((xx - 30) ** 2 + (yy - 34) ** 2) / 400.0) + 0.05 * rng.random((H, W))
    return np.round(img * 255) / 255  # exactly representable in 8 bits


def _png(path: Path, arr01: np.ndarray) -> None:
    Image.fromarray(np.round(arr01 * 255).astype(np.uint8)).save(path)


def _case(root: Path, name: str, source: np.ndarray, cf: np.ndarray, mask: np.ndarray, instruction: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    _png(folder / "source.png", source)
    _png(folder / "counterfactual.png", cf)  # what x2x edit writes
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    (folder / "result.json").write_text(json.dumps({"instruction": instruction, "synthetic": True}))
    return folder


def _right_half() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[10:50, 36:60] = True  # image right = patient LEFT on a standard PA/AP display
    return mask


def test_ssim_known_values() -> None:
    a = _smooth_image(0)
    assert np.allclose(ssim_map(a, a), 1.0)
    # constant images: variance and covariance vanish, SSIM = (2xy + C1) / (x^2 + y^2 + C1)
    c1 = (0.01) ** 2
    got = ssim_map(np.full((20, 20), 0.2), np.full((20, 20), 0.6))
    assert np.allclose(got, (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 0.05, a.shape), 0, 1)
    noisier = np.clip(a + np.random.default_rng(1).normal(0, 0.2, a.shape), 0, 1)
    assert 1 > ssim_map(a, noisy).mean() > ssim_map(a, noisier).mean()


def test_change_only_inside_mask(tmp_path: Path) -> None:
    src = _smooth_image(0)
    mask = _right_half()
    cf = src.copy()
    cf[mask] += 0.2
    _case(tmp_path, "local", src, cf, mask, "Add the finding of left pleural effusion.")
    report = evaluate(tmp_path)
    case = report["cases"][0]
    assert case["change_outside"] == 0.0 and case["identical_outside"] == 1.0
    assert math.isinf(case["psnr_outside"]) and case["ssim_outside"] == pytest.approx(1.0, abs=1e-12)
    assert case["change_inside"] == pytest.approx(0.2, abs=1 / 255)
    assert case["coverage"] == pytest.approx(mask.mean())
    lat = case["laterality"]
    assert lat["applicable"] and lat["image_side"] == "image_right" and lat["mass"] == 1.0 and lat["agrees"]
    assert "assumed standard" in lat["orientation"]  # PNG: no DICOM orientation, and it says so
    s = report["summary"]
    assert s["laterality_agreement"] == 1.0 and s["classifier"]["computed"] is False
    assert "not computed" in s["classifier"]["reason"]
    json.loads(to_json(report))  # inf survives as a string


def test_global_change_and_wrong_side(tmp_path: Path) -> None:
    src = np.round(_smooth_image(2) * 0.7 * 255) / 255
    mask = _right_half()
    cf = src + 51 / 255  # changes everywhere by 0.2: outside MSE 0.04 -> PSNR 10 log10(25) dB
    _case(tmp_path, "global", src, cf, mask, "Remove the finding of right pleural effusion.")
    _case(tmp_path, "nonside", src, src, mask, "Add the finding of edema.")
    report = evaluate(tmp_path)
    by = {c["case"]: c for c in report["cases"]}
    g = by["global"]
    assert g["change_outside"] == pytest.approx(0.2, abs=1e-9)
    assert g["psnr_outside"] == pytest.approx(10 * math.log10(25), abs=1e-6)
    assert g["identical_outside"] == 0.0 and g["ssim_outside"] < 1.0
    # the instruction names the patient's RIGHT (image left) but the mask sits on the image right
    assert g["laterality"]["mass"] == 0.0 and g["laterality"]["agrees"] is False
    assert by["nonside"]["laterality"]["applicable"] is False
    assert report["summary"]["laterality_cases"] == 1 and report["summary"]["laterality_agreement"] == 0.0


def test_cases_csv_with_flipped_orientation(tmp_path: Path) -> None:
    src = _smooth_image(3)
    mask = _right_half()
    np.save(tmp_path / "s.npy", src)
    np.save(tmp_path / "c.npy", src)
    np.save(tmp_path / "m.npy", mask)
    (tmp_path / "cases.csv").write_text(
        "case,source,counterfactual,mask,instruction,patient_orientation\n"
        "flipped,s.npy,c.npy,m.npy,Add the finding of left pleural effusion.,R\\F\n"
    )
    lat = evaluate(tmp_path)["cases"][0]["laterality"]
    # rows run toward the patient's Right: patient left is on the image LEFT, so the mask disagrees
    assert lat["image_side"] == "image_left" and lat["agrees"] is False


def test_dicom_source(tmp_path: Path, chest_cr_path: Path) -> None:
    from editor.preprocess import DisplayMapping
    from editor.source import source_from_file

    src = source_from_file(chest_cr_path)
    display = DisplayMapping.from_source(src).to_display(src.pixels).astype(np.float64)
    mask = np.zeros(display.shape, bool)
    rows, cols = display.shape
    mask[rows // 3: rows // 2, cols // 6: cols // 3] = True  # image left = patient RIGHT (L\F, PA)
    cf = display.copy()
    cf[mask] = np.clip(cf[mask] + 0.3, 0, 1)
    folder = tmp_path / "cr"
    folder.mkdir()
    (folder / "source.dcm").write_bytes(chest_cr_path.read_bytes())
    np.save(folder / "counterfactual.npy", cf)
    np.save(folder / "mask.npy", mask)
    (folder / "instruction.txt").write_text("Add the finding of right pleural effusion.")
    case = evaluate(tmp_path)["cases"][0]
    assert case["change_outside"] == 0.0 and case["ssim_outside"] == pytest.approx(1.0, abs=1e-9)
    assert case["change_inside"] > 0.05
    assert case["laterality"]["agrees"] and "PatientOrientation" in case["laterality"]["orientation"]


def _write_classifier(path: Path) -> Path:
    import torch

    class Toy(torch.nn.Module):
        """Finding 0 (pleural effusion) fires on a bright image-right half; 1 (edema) on the left."""

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            w = x.shape[-1] // 2
            right = x[..., w:].mean()
            left = x[..., :w].mean()
            mean = x.mean()
            findings = torch.stack([(right - 0.5) * 50, (left - 0.5) * 50]).reshape(1, 2)
            return {"findings": findings, "age": (mean * 100).reshape(1, 1),
                    "race": torch.stack([mean, 1 - mean]).reshape(1, 2)}

    torch.jit.script(Toy()).save(str(path))
    path.with_suffix(".json").write_text(json.dumps({"findings": ["effusion", "edema"], "resolution": 32}))
    return path


def test_classifier_metrics(tmp_path: Path) -> None:
    clf = _write_classifier(tmp_path / "clf.pt")
    data = tmp_path / "cases"
    src = np.full((H, W), 0.3)
    cf = src.copy()
    cf[:, W // 2:] = 0.8  # the whole image-right half brightened
    mask = np.zeros((H, W), bool)
    mask[:, W // 2:] = True
    _case(data, "a", src, cf, mask, "Add the finding of left pleural effusion.")
    report = evaluate(data, classifier=clf)
    f = report["cases"][0]["classifier"]["findings"]["pleural effusion"]
    assert f["eligible"] and f["flipped"] and f["p_source"] < 0.01 and f["p_counterfactual"] > 0.99
    c = report["summary"]["classifier"]
    assert c["computed"] and c["flip_rate"] == 1.0 and c["confidence_gain"] > 0.98
    assert c["age_change_mean"] == pytest.approx(25.0, abs=0.3)  # mean 0.3 -> 0.55
    assert c["race_preserved"] == 0.0  # argmax moves from class 1 to class 0


def test_cli_eval(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicom_node.cli import app

    src = _smooth_image(0)
    mask = _right_half()
    cf = src.copy()
    cf[mask] += 0.2
    _case(tmp_path / "cases", "local", src, cf, mask, "Add the finding of left pleural effusion.")
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "cases"), "--out", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "laterality_agreement" in result.output and "not computed" in result.output
    report = json.loads(report_path.read_text())
    assert report["summary"]["psnr_outside"] == "inf" and report["summary"]["change_outside"] == 0.0
