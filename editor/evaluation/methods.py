"""The methods one `x2x reproduce` run compares, and the paper's published numbers to print beside them.

Every method runs the same loaded model on the same rows with the same seed; only the RSE settings
differ (EditParams), so the comparison is paired:

* `ip2p`     — plain InstructPix2Pix: RSE off (tau = 0), the research code's switch (the paper's baseline);
* `paper`    — RSE with the paper's fixed per-finding masks (`pseudo_mask_<Finding>.npy`), as published;
* `anatomy`  — RSE with this project's per-image anatomy prior (editor/regions.py);
* `none`     — RSE with the relevance map alone (prior = all ones): an ablation of the prior;
* `anatomy-tau<t>` — the anatomy prior at other thresholds (the tau sweep).
The reference row `real` (no edit: the real current image scored as if it were the counterfactual)
is the upper bound the paper reports as "Real images".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from editor.types import EditParams

__all__ = ["PUBLISHED", "REAL", "Method", "build_methods"]

REAL = "real"

# InstructX2X (Min et al., MICCAI 2025; arXiv 2603.00423), as quoted by the issue this command answers.
# Values are percentages. Only these numbers are printed; the paper's other cells are not reproduced here.
PUBLISHED: dict[str, dict[str, float]] = {
    "paper": {"cmig": 89.35, "race_accuracy": 97.65, "age_correlation": 82.84},  # InstructX2X (fixed masks)
    REAL: {"cmig": 90.99},  # real current images
    "biomedjourney": {"cmig": 83.23},  # BiomedJourney (Gu et al. 2023), as reported by InstructX2X
}
PUBLISHED_LABELS = {"paper": "InstructX2X", REAL: "Real images", "biomedjourney": "BiomedJourney"}


@dataclass(frozen=True)
class Method:
    name: str  # folder name and table key
    label: str
    changes: dict[str, Any] = field(default_factory=dict)  # EditParams fields this method sets

    def params(self, base: EditParams) -> EditParams:
        return base.replace(**self.changes)


def _tau_text(tau: float) -> str:
    return f"{tau:g}"


def build_methods(names: list[str], *, tau: float, tau_sweep: list[float], paper_masks: str | None) -> list[Method]:
    """Methods in the order given; raises ValueError for an unknown name or `paper` without masks."""
    out: list[Method] = []
    for name in names:
        if name == "ip2p":
            out.append(Method("ip2p", "IP2P (RSE off, tau = 0)", {"rse": False, "tau": 0.0}))
        elif name == "paper":
            if not paper_masks:
                raise ValueError("method 'paper' needs --paper-masks DIR (a folder of pseudo_mask_<Finding>.npy)")
            out.append(Method("paper", f"RSE, paper's fixed masks (tau = {_tau_text(tau)})",
                              {"rse": True, "tau": tau, "prior": "paper", "paper_prior_dir": str(paper_masks)}))
        elif name == "anatomy":
            out.append(Method("anatomy", f"RSE, per-image anatomy prior (tau = {_tau_text(tau)})",
                              {"rse": True, "tau": tau, "prior": "anatomy"}))
        elif name == "none":
            out.append(Method("none", f"RSE, relevance map only (no prior, tau = {_tau_text(tau)})",
                              {"rse": True, "tau": tau, "prior": "none"}))
        else:
            raise ValueError(f"unknown method {name!r} (ip2p, paper, anatomy, none)")
    for t in tau_sweep:
        if t == tau and any(m.name == "anatomy" for m in out):
            continue
        out.append(Method(f"anatomy-tau{_tau_text(t)}", f"RSE, anatomy prior, tau = {_tau_text(t)}",
                          {"rse": True, "tau": float(t), "prior": "anatomy"}))
    names_seen = [m.name for m in out]
    if len(set(names_seen)) != len(names_seen):
        raise ValueError(f"a method is listed twice: {', '.join(names_seen)}")
    return out
