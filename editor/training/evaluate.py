"""`x2x eval DIR`: how local, how faithful to the source and how lateralised a set of counterfactuals is.

The cases (the layout of DIR, how images are read) are editor/training/eval_cases.py.

Metrics per case (and their mean over cases):
* change_inside / change_outside — mean |counterfactual - source| inside / outside the mask;
  identical_outside — fraction of outside pixels that are exactly unchanged.
* psnr_outside (dB; inf when identical), ssim_outside — SSIM (Wang et al. 2004: Gaussian window
  sigma 1.5, radius 5, K1 0.01, K2 0.03) averaged over outside pixels whose window does not reach the
  mask, so that a change inside the mask cannot leak into the outside score.
* coverage — mask fraction of the image.
* laterality — for instructions with one side (left / right, not bilateral): the patient side goes to an
  image side through editor.orientation (DICOM PatientOrientation / ViewPosition; PNGs: the CSV columns,
  else standard PA/AP display, recorded as assumed); `laterality_mass` = mask mass on that image half
  (split at the centre column); agreement = mass > 0.5. Other instructions: not applicable.

Classifier metrics (only with a local classifier; never downloaded). A TorchScript file `<name>.pt` and
a sidecar `<name>.json`:
    {"findings": ["pleural effusion", ...],   # output order; names from editor.vocabulary
     "resolution": 224,                        # input is resized to resolution x resolution
     "age_head": "age", "race_head": "race"}   # optional keys of a dict output
The module is called as `model(x)` with x a float32 tensor (1, 1, H, W) in [0, 1] and returns either
a (1, F) logit tensor over `findings`, or a dict with "findings": (1, F) logits and optional
age (1, 1) regression in years / race (1, R) logits. Reported: flip rate (add: p<0.5 -> p>=0.5;
remove: p>=0.5 -> p<0.5, over the cases where the source was on the "before" side), the mean
confidence gain in the instruction's direction (CMIG-style: add p_cf - p_src, remove p_src - p_cf),
mean |age change| and the race prediction agreement. Without a classifier these are reported as
not computed, with the reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from editor.instructions import InstructionError, ParsedInstruction, parse_instruction
from editor.orientation import Orientation
from editor.training.eval_cases import discover_cases, load_case

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # an 11 x 11 window, as Wang et al.
SSIM_K1, SSIM_K2 = 0.01, 0.03


# --------------------------------------------------------------------------------------------------
# Metrics


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel SSIM with a Gaussian window (sigma 1.5, radius 5), images as float."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    truncate = SSIM_RADIUS / SSIM_SIGMA

    def blur(x: np.ndarray) -> np.ndarray:
        return np.asarray(ndimage.gaussian_filter(x, SSIM_SIGMA, truncate=truncate, mode="reflect"))

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def image_metrics(source: np.ndarray, cf: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    diff = np.abs(cf - source)
    outside = ~mask
    data_range = 1.0 if (source.min() >= 0 and source.max() <= 1) else float(source.max() - source.min()) or 1.0
    mse = _mean((cf - source)[outside] ** 2) / data_range**2
    psnr = float("inf") if mse == 0 else (float("nan") if math.isnan(mse) else -10 * math.log10(mse))
    # outside pixels whose SSIM window does not reach the mask
    far = ~ndimage.binary_dilation(mask, iterations=SSIM_RADIUS, structure=np.ones((3, 3), bool))
    return {
        "change_inside": _mean(diff[mask]),
        "change_outside": _mean(diff[outside]),
        "identical_outside": _mean((diff[outside] == 0).astype(np.float64)),
        "psnr_outside": psnr,
        "ssim_outside": _mean(ssim_map(source, cf, data_range)[far]),
        "coverage": float(mask.mean()),
    }


def instruction_side(parsed: ParsedInstruction) -> str | None:
    """'left' / 'right' when the instruction names exactly one patient side, else None."""
    sides = parsed.locations & {"left", "right", "bilateral"}
    return next(iter(sides)) if len(sides) == 1 and sides != {"bilateral"} else None


def laterality(parsed: ParsedInstruction, mask: np.ndarray, orientation: Orientation) -> dict[str, Any]:
    side = instruction_side(parsed)
    if side is None:
        return {"applicable": False, "reason": "instruction names no single side"}
    if not orientation.laterality_known:
        return {"applicable": False, "reason": orientation.provenance}
    image_side = orientation.image_side(side)  # type: ignore[arg-type]
    width = mask.shape[1]
    left_mass = float(mask[:, : width // 2].sum()) + (float(mask[:, width // 2].sum()) / 2 if width % 2 else 0.0)
    total = float(mask.sum())
    if total == 0:
        return {"applicable": True, "patient_side": side, "image_side": image_side, "mass": None,
                "agrees": False, "reason": "empty mask", "orientation": orientation.provenance}
    frac_left = left_mass / total
    mass = frac_left if image_side == "image_left" else 1 - frac_left
    return {"applicable": True, "patient_side": side, "image_side": image_side, "mass": mass,
            "agrees": mass > 0.5, "orientation": orientation.provenance}


# --------------------------------------------------------------------------------------------------
# Classifier


class Classifier:
    """A local TorchScript classifier with the interface in the module docstring."""

    def __init__(self, path: str | Path) -> None:
        import torch

        self.path = Path(path)
        meta_path = self.path.with_suffix(".json")
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: the classifier needs its sidecar JSON (findings, resolution)")
        meta = json.loads(meta_path.read_text())
        from editor.vocabulary import lookup_finding

        self.findings = [lookup_finding(n).name for n in meta["findings"]]
        self.resolution = int(meta.get("resolution", 224))
        self.age_head, self.race_head = meta.get("age_head", "age"), meta.get("race_head", "race")
        self.model = torch.jit.load(str(self.path), map_location="cpu")
        self.model.eval()

    def __call__(self, image01: np.ndarray) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None, None]
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        with torch.no_grad():
            out = self.model(x)
        heads = out if isinstance(out, dict) else {"findings": out}
        result = {"findings": torch.sigmoid(heads["findings"].float()).reshape(-1).numpy()}
        if self.age_head in heads:
            result["age"] = heads[self.age_head].float().reshape(-1).numpy()
        if self.race_head in heads:
            result["race"] = heads[self.race_head].float().reshape(-1).numpy()
        return result


def classifier_metrics(clf: Classifier, parsed: ParsedInstruction, source: np.ndarray,
                       cf: np.ndarray) -> dict[str, Any]:
    before, after = clf(source), clf(cf)
    per_finding = {}
    for name in parsed.finding_names:
        if name not in clf.findings:
            per_finding[name] = {"computed": False, "reason": "finding not among the classifier's outputs"}
            continue
        k = clf.findings.index(name)
        p0, p1 = float(before["findings"][k]), float(after["findings"][k])
        entry: dict[str, Any] = {"computed": True, "p_source": p0, "p_counterfactual": p1}
        if parsed.operation in ("add", "remove"):
            adding = parsed.operation == "add"
            entry["eligible"] = (p0 < 0.5) if adding else (p0 >= 0.5)
            entry["flipped"] = entry["eligible"] and ((p1 >= 0.5) if adding else (p1 < 0.5))
            entry["confidence_gain"] = (p1 - p0) if adding else (p0 - p1)
        per_finding[name] = entry
    out: dict[str, Any] = {"findings": per_finding}
    if "age" in before:
        out["age_change"] = float(abs(after["age"][0] - before["age"][0]))
    if "race" in before:
        out["race_preserved"] = bool(int(np.argmax(after["race"])) == int(np.argmax(before["race"])))
    return out


# --------------------------------------------------------------------------------------------------
# The evaluation


def evaluate(root: str | Path, *, classifier: str | Path | None = None) -> dict[str, Any]:
    """Evaluate every case under `root`; returns {"cases": [...], "summary": {...}} (JSON-ready)."""
    clf = Classifier(classifier) if classifier is not None else None
    cases_out = []
    for case in discover_cases(root):
        entry: dict[str, Any] = {"case": case.name, "instruction": case.instruction}
        try:
            parsed = parse_instruction(case.instruction)
        except InstructionError as exc:
            entry["error"] = f"instruction: {exc}"
            cases_out.append(entry)
            continue
        loaded = load_case(case)
        entry["instruction"] = parsed.canonical()
        entry.update(image_metrics(loaded.source, loaded.counterfactual, loaded.mask))
        entry["laterality"] = laterality(parsed, loaded.mask, loaded.orientation)
        if clf is not None:
            entry["classifier"] = classifier_metrics(clf, parsed, loaded.source, loaded.counterfactual)
        entry["notes"] = loaded.notes
        cases_out.append(entry)
    return {"cases": cases_out, "summary": summarise(cases_out, classifier)}


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return None
    return float(np.mean(finite))  # inf stays inf (all cases identical outside)


def summarise(cases: list[dict[str, Any]], classifier: str | Path | None) -> dict[str, Any]:
    ok = [c for c in cases if "error" not in c]
    summary: dict[str, Any] = {"cases": len(cases), "evaluated": len(ok), "errors": len(cases) - len(ok)}
    for key in ("change_inside", "change_outside", "identical_outside", "psnr_outside", "ssim_outside", "coverage"):
        summary[key] = _nanmean([c[key] for c in ok])
    lat = [c["laterality"] for c in ok if c["laterality"]["applicable"]]
    summary["laterality_cases"] = len(lat)
    summary["laterality_agreement"] = (sum(bool(x["agrees"]) for x in lat) / len(lat)) if lat else None
    summary["laterality_mass"] = _nanmean([x["mass"] for x in lat if x["mass"] is not None])
    if classifier is None:
        summary["classifier"] = {"computed": False,
                                 "reason": "no classifier configured (--classifier PATH.pt): finding flip rate, "
                                           "confidence gain, age and race preservation not computed"}
        return summary
    entries = [f for c in ok for f in c["classifier"]["findings"].values() if f.get("computed")]
    eligible = [f for f in entries if f.get("eligible")]
    ages = [c["classifier"]["age_change"] for c in ok if "age_change" in c["classifier"]]
    races = [c["classifier"]["race_preserved"] for c in ok if "race_preserved" in c["classifier"]]
    summary["classifier"] = {
        "computed": True, "path": str(classifier),
        "findings_scored": len(entries),
        "flip_rate": (sum(f["flipped"] for f in eligible) / len(eligible)) if eligible else None,
        "flip_eligible": len(eligible),
        "confidence_gain": _nanmean([f["confidence_gain"] for f in entries if "confidence_gain" in f]),
        "age_change_mean": _nanmean(ages) if ages else None,
        "race_preserved": (sum(races) / len(races)) if races else None,
    }
    return summary


def summary_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="x2x eval")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report["summary"].items():
        if isinstance(value, dict):
            for k, v in value.items():
                table.add_row(f"{key}.{k}", _fmt(v))
        else:
            table.add_row(key, _fmt(value))
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}"
    return str(v)


def to_json(report: dict[str, Any]) -> str:
    """JSON with inf/nan written as strings (JSON has no literal for them)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
            return str(x)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(report), indent=2)
