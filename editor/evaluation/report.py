"""The report: the paper's table layout (method x CMIG, race accuracy, age correlation, locality), as
JSON (`report.json`) and Markdown (`report.md`), with the published numbers printed beside ours."""

from __future__ import annotations

import json
import math
from typing import Any

from editor.evaluation.methods import PUBLISHED, PUBLISHED_LABELS, REAL

__all__ = ["CAVEATS", "render_markdown", "to_json"]

CAVEATS = (
    "CMIG = sqrt(pathology accuracy x race accuracy) (geometric mean). This definition is recalled from "
    "BiomedJourney (Gu et al. 2023, arXiv 2310.10765), not verified against its text here; the harmonic and "
    "arithmetic means are in report.json (cmig_harmonic, cmig_arithmetic). Which race reference (source "
    "prediction or recorded race), which pathology weights and which decision threshold the papers used "
    "could not be established either: see docs/research.md section 4.",
    "FID-XRV uses torchxrayvision DenseNet-121 features, not Inception-v3: not comparable with Inception FIDs.",
    "Every counterfactual is synthetic.",
)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.2f}"


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{float(value):.{digits}g}"


def _with_ci(entry: dict[str, Any], key: str) -> str:
    text = _pct(entry["metrics"].get(key))
    ci = entry.get("ci", {}).get(key)
    if ci and text != "–":
        text += f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
    return text


def _published(name: str, key: str) -> str:
    value = PUBLISHED.get(name, {}).get(key)
    return "–" if value is None else f"{value:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# x2x reproduce: InstructX2X metrics (SYNTHETIC counterfactuals)",
        "",
        f"Model `{report['model'].get('model_id', '?')}` (weights {report['model'].get('weights_hash', '?')[:12]}), "
        f"table `{report['dataset']['table']}`, split `{report['dataset']['split']}`: "
        f"{report['rows']['usable']} of {report['rows']['total']} rows usable; seed {report['settings']['seed']}, "
        f"{report['settings']['steps']} steps, bootstrap {report['settings']['bootstrap']} resamples (95 % CI).",
        "",
        "Locality: change = mean |counterfactual - source| in display units [0, 1]; outside = outside the row's own "
        "guidance mask (none for IP2P: its mask is the whole image); Change (all) = over the whole image.",
        "",
    ]
    if not report["classifiers"].get("computed"):
        lines += [f"Classifier metrics not computed: {report['classifiers']['reason']}", ""]
    lines += [
        "Percentages; ours [95 % CI] beside the published value (InstructX2X, Min et al. 2025).",
        "",
        "| Method | n | CMIG | published | Race acc. | published | Age corr. | published | Pathology acc. "
        "| Change outside | Identical outside | SSIM outside | Change (all) | FID-XRV |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["methods"]:
        m, name = entry["metrics"], entry["name"]
        lines.append(
            f"| {entry['label']} | {int(m.get('rows', 0))} | {_with_ci(entry, 'cmig')} | {_published(name, 'cmig')} "
            f"| {_with_ci(entry, 'race_accuracy')} | {_published(name, 'race_accuracy')} "
            f"| {_with_ci(entry, 'age_correlation')} | {_published(name, 'age_correlation')} "
            f"| {_with_ci(entry, 'pathology_accuracy')} | {_num(m.get('change_outside'))} "
            f"| {_pct(m.get('identical_outside'))} | {_num(m.get('ssim_outside'))} | {_num(m.get('change_all'))} "
            f"| {_num(entry.get('fid'))} |"
        )
    for name in PUBLISHED:
        if name not in {e["name"] for e in report["methods"]}:
            lines.append(f"| {PUBLISHED_LABELS[name]} (published only) | – | – | {_published(name, 'cmig')} | – "
                         f"| {_published(name, 'race_accuracy')} | – | {_published(name, 'age_correlation')} "
                         "| – | – | – | – | – | – |")
    lines += ["", "Rows whose paper value is given: InstructX2X = the paper-mask RSE row; Real images = the real "
              f"current images (`{REAL}`).", "", "## Per method", ""]
    for entry in report["methods"]:
        m = entry["metrics"]
        counts = ", ".join(f"{k} {v}" for k, v in sorted(entry.get("status", {}).items()))
        lines.append(f"- **{entry['label']}** (`{entry['name']}`): {counts or 'no rows'}; pathology accuracy "
                     f"macro {_pct(m.get('pathology_accuracy_macro'))}, add {_pct(m.get('pathology_accuracy_add'))}, "
                     f"remove {_pct(m.get('pathology_accuracy_remove'))}, change "
                     f"{_pct(m.get('pathology_accuracy_change'))} ({int(m.get('decisions', 0))} decisions); "
                     f"age MAE {_num(m.get('age_mae'))} y; PSNR outside (median) {_num(m.get('psnr_outside'))} dB; "
                     f"coverage {_pct(m.get('coverage'))} %; FID images {entry.get('fid_images', 0)}")
    lines += ["", "## Caveats", ""] + [f"- {c}" for c in CAVEATS + tuple(report.get("notes", []))]
    if report.get("figure"):
        lines += ["", f"![source / counterfactual / guidance map]({report['figure']})"]
    return "\n".join(lines) + "\n"


def to_json(report: dict[str, Any]) -> str:
    """JSON with inf / nan written as strings (JSON has no literal for them)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
            return str(x)
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(report), indent=2)
