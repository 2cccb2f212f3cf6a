"""Figures and numbers for docs/demo-model.md: the shipped phantom demo model on held-out phantoms.

    .venv/bin/python scripts/demo_figures.py [--patients 4] [--steps 20] [--out docs/img] [--model DIR]
                                             [--prefix demo]

Prints one JSON object of measurements and writes before / after / overlay strips (PNG) to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from editor.demo import demo_model_path
from editor.editor import Editor
from editor.training.phantoms import Findings, Patient, change_mask, expose, region_masks, render, to_source_image
from editor.types import EditParams

HELD_OUT_SEED = 4242
SIZE = 128


def overlay(grey01: np.ndarray, guidance: np.ndarray, tau: float, truth: np.ndarray | None) -> np.ndarray:
    """The research display: red of intensity G where G >= tau; the truth's outline in green."""
    grey = np.clip(grey01 * 255, 0, 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    shown = guidance >= tau
    rgb[shown] = 0
    rgb[..., 0][shown] = np.clip(guidance[shown] * 255, 0, 255).astype(np.uint8)
    if truth is not None:
        from scipy import ndimage

        edge = truth & ~ndimage.binary_erosion(truth)
        rgb[edge] = (0, 255, 0)
    return rgb


def strip(tiles: list[np.ndarray], scale: int = 2) -> Image.Image:
    rgb = [t if t.ndim == 3 else np.stack([t] * 3, axis=-1) for t in tiles]
    gap = np.full((SIZE, 4, 3), 255, dtype=np.uint8)
    row = np.concatenate([x for t in rgb for x in (t, gap)][:-1], axis=1)
    return Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.Resampling.NEAREST)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--model", type=Path, default=None, help="another build (default: the shipped model)")
    ap.add_argument("--prefix", default="demo", help="file-name prefix of the PNG strips")
    args = ap.parse_args()
    path = args.model or demo_model_path()
    if path is None:
        raise SystemExit("no demo model shipped: run `x2x model build-demo` first")
    ed = Editor.from_pretrained(path, device="cpu", dtype="float32")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(args.patients):
        p = Patient.sample(np.random.default_rng([HELD_OUT_SEED, k]))
        clear_clean = render(p, Findings(), SIZE)
        eff_clean = render(p, Findings(effusion={"left": "moderate"}), SIZE)
        truth = change_mask(clear_clean, eff_clean)
        clear, eff = expose(p, clear_clean), expose(p, eff_clean)
        regions = region_masks(p, SIZE)
        base_r, base_l = regions["base_image_right"], regions["base_image_left"]
        add_on = ed.edit(to_source_image(clear), "Add the finding of left pleural effusion.", seed=0,
                         params=EditParams(steps=args.steps))
        add_off = ed.edit(to_source_image(clear), "Add the finding of left pleural effusion.", seed=0,
                          params=EditParams(steps=args.steps, rse=False))
        add_right = ed.edit(to_source_image(clear), "Add the finding of right pleural effusion.", seed=0,
                            params=EditParams(steps=args.steps))
        rem = ed.edit(to_source_image(eff), "Remove the finding of left pleural effusion.", seed=0,
                      params=EditParams(steps=args.steps))
        d_on = add_on.counterfactual / 255.0 - clear / 255.0
        d_off = add_off.counterfactual / 255.0 - clear / 255.0
        d_rem = rem.counterfactual / 255.0 - eff / 255.0
        rows.append({
            "patient": k,
            "add_gain_image_right_base": float(d_on[base_r].mean()),
            "add_abs_change_elsewhere": float(np.abs(d_on[~base_r]).mean()),
            "add_gain_in_truth": float(d_on[truth].mean()),
            "add_right_gain_image_left_base": float((add_right.counterfactual / 255.0 - clear / 255.0)[base_l].mean()),
            "iou_mask_truth": float((add_on.mask & truth).sum() / (add_on.mask | truth).sum()),
            "truth_recall": float((add_on.mask & truth).sum() / truth.sum()),
            "mask_coverage": float(add_on.coverage),
            "outside_truth_abs_change_rse_on": float(np.abs(d_on[~truth]).mean()),
            "outside_truth_abs_change_rse_off": float(np.abs(d_off[~truth]).mean()),
            "remove_change_in_truth": float(d_rem[truth].mean()),
            "remove_err_to_clear_before": float(np.abs(eff / 255.0 - clear / 255.0)[truth].mean()),
            "remove_err_to_clear_after": float(np.abs(rem.counterfactual / 255.0 - clear / 255.0)[truth].mean()),
            "seconds_per_edit": float(add_on.timings["total"]),
        })
        if k == 0:
            strip([clear, add_on.counterfactual, overlay(clear / 255.0, add_on.guidance, 0.1, truth),
                   add_off.counterfactual]).save(args.out / f"{args.prefix}-add-left-effusion.png", optimize=True)
            strip([eff, rem.counterfactual, overlay(eff / 255.0, rem.guidance, 0.1, truth)]).save(
                args.out / f"{args.prefix}-remove-left-effusion.png", optimize=True)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "patient"}
    print(json.dumps({"model_id": ed.model_id, "steps": args.steps, "held_out_seed": HELD_OUT_SEED,
                      "mean": mean, "per_patient": rows}, indent=2))


if __name__ == "__main__":
    main()
