"""The paper's metrics (InstructX2X, following BiomedJourney) over scored rows, with bootstrap intervals.

Definitions (docs/research.md §4 gives the sources and what could not be established):

* pathology accuracy — each (row, edited finding) with a classifier label is one decision: the
  instruction fixes the finding's state on the counterfactual (`Add` / `Change the level`: present = 1,
  `Remove`: absent = 0); the pathology DenseNet calls it present when its operating-point-normalised
  output is >= 0.5; accuracy = correct decisions / decisions (micro). The per-finding mean (macro) and
  the per-operation accuracies are reported beside it.
* race accuracy — the race classifier's argmax on the counterfactual equals its argmax on the source
  (or, when the table has a `race` column, the recorded race: `race_accuracy_label`).
* age correlation — Pearson r between the age model's prediction on the source and on the counterfactual.
* CMIG — sqrt(pathology accuracy x race accuracy), the geometric mean (see the caveat in docs/research.md:
  recalled, not verified against the BiomedJourney text here); harmonic and arithmetic means are
  reported beside it so the reader can compare with the published values.
* locality — means over rows of editor/training/evaluate.image_metrics (outside = outside the row's mask).

Bootstrap: percentile intervals over rows resampled with replacement; the same draws are used for every
method, so the intervals of two methods are paired.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from editor.evaluation.xrv_weights import FINDING_TO_LABEL
from editor.instructions import ParsedInstruction

__all__ = ["ScoredRow", "bootstrap", "cmig", "compute", "pathology_targets", "pearson"]

LOCALITY_KEYS = ("change_outside", "identical_outside", "ssim_outside", "psnr_outside", "change_inside",
                 "change_all", "ssim_all", "coverage")


def pathology_targets(parsed: ParsedInstruction) -> dict[str, int]:
    """Classifier label -> the state the instruction asks for on the counterfactual (1 present, 0 absent)."""
    state = 0 if parsed.operation == "remove" else 1
    return {FINDING_TO_LABEL[n]: state for n in parsed.finding_names if n in FINDING_TO_LABEL}


@dataclass
class ScoredRow:
    key: str
    operation: str
    targets: dict[str, int] = field(default_factory=dict)
    probs: dict[str, float] = field(default_factory=dict)  # classifier output on the counterfactual
    race_src: int | None = None
    race_cf: int | None = None
    race_label: int | None = None
    age_src: float | None = None
    age_cf: float | None = None
    locality: dict[str, float] = field(default_factory=dict)

    def decisions(self) -> list[tuple[str, bool]]:
        """(label, correct) for every target the classifier scores."""
        out = []
        for label, target in self.targets.items():
            p = self.probs.get(label)
            if p is None or math.isnan(p):
                continue
            out.append((label, (p >= 0.5) == bool(target)))
        return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r; NaN with fewer than 3 pairs or a constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 3 or a.size != b.size:
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    return float((da * db).sum() / denom) if denom > 0 else math.nan


def cmig(pathology_accuracy: float, race_accuracy: float, how: str = "geometric") -> float:
    p, r = pathology_accuracy, race_accuracy
    if math.isnan(p) or math.isnan(r):
        return math.nan
    if how == "geometric":
        return math.sqrt(p * r)
    if how == "harmonic":
        return 2 * p * r / (p + r) if p + r > 0 else 0.0
    if how == "arithmetic":
        return (p + r) / 2
    raise ValueError(f"unknown mean {how!r}")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def compute(rows: Sequence[ScoredRow]) -> dict[str, float]:
    """Every metric of one method over `rows` (fractions, not percentages)."""
    out: dict[str, float] = {"rows": float(len(rows))}
    decisions = [(r.operation, label, ok) for r in rows for label, ok in r.decisions()]
    out["decisions"] = float(len(decisions))
    out["pathology_accuracy"] = _mean([float(ok) for _, _, ok in decisions])
    labels = sorted({label for _, label, _ in decisions})
    out["pathology_accuracy_macro"] = _mean([_mean([float(ok) for _, lb, ok in decisions if lb == label])
                                             for label in labels])
    for op in ("add", "remove", "change"):
        out[f"pathology_accuracy_{op}"] = _mean([float(ok) for o, _, ok in decisions if o == op])
    race = [(r.race_src, r.race_cf) for r in rows if r.race_src is not None and r.race_cf is not None]
    out["race_accuracy"] = _mean([float(a == b) for a, b in race])
    labelled = [(r.race_label, r.race_cf) for r in rows if r.race_label is not None and r.race_cf is not None]
    out["race_accuracy_label"] = _mean([float(a == b) for a, b in labelled])
    ages = [(r.age_src, r.age_cf) for r in rows if r.age_src is not None and r.age_cf is not None]
    out["age_correlation"] = pearson([a for a, _ in ages], [b for _, b in ages])
    out["age_mae"] = _mean([abs(a - b) for a, b in ages])
    for how in ("geometric", "harmonic", "arithmetic"):
        key = "cmig" if how == "geometric" else f"cmig_{how}"
        out[key] = cmig(out["pathology_accuracy"], out["race_accuracy"], how)
    for key in LOCALITY_KEYS:
        values = [r.locality[key] for r in rows if key in r.locality]
        if key == "psnr_outside":  # inf when identical outside: the median is the meaningful centre
            finite = [v for v in values if not math.isnan(v)]
            out[key] = float(np.median(finite)) if finite else math.nan
        else:
            out[key] = _mean(values)
    return out


def bootstrap(methods: Mapping[str, Sequence[ScoredRow]], keys: Sequence[str], *, resamples: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile intervals per method and metric, from `resamples` draws of `keys` with replacement."""
    if resamples <= 0 or not keys:
        return {name: {} for name in methods}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(resamples, len(keys)))
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, rows in methods.items():
        by_key = {r.key: r for r in rows}
        samples: dict[str, list[float]] = {}
        for draw in draws:
            picked = [by_key[keys[i]] for i in draw if keys[i] in by_key]
            for metric, value in compute(picked).items():
                samples.setdefault(metric, []).append(value)
        intervals = {}
        for metric, values in samples.items():
            arr = np.asarray(values, dtype=np.float64)
            arr = arr[np.isfinite(arr)]
            if arr.size:
                intervals[metric] = (float(np.percentile(arr, lo_q)), float(np.percentile(arr, hi_q)))
        out[name] = intervals
    return out
