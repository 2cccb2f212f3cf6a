"""The reference table: each row's real images found and scored once, shared by every method.

`<out>/reference.csv` holds, per row, where its past (source) and current (real target) images are, and
the classifiers' outputs on both: the source side of race accuracy and age correlation, and the
"Real images" row of the report (the current image scored as if it were the counterfactual).
Appended and fsync'ed per row like the method tables, so it resumes the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editor.append_table import AppendOnlyTable
from editor.evaluation.driver import encode_scores, load_display
from editor.evaluation.rows import EvalRow, ImageLocator

__all__ = ["REFERENCE_COLUMNS", "score_reference"]

REFERENCE_COLUMNS = (
    "key", "index", "status", "reason", "past_path", "current_path", "instruction",
    "probs_src", "race_src", "age_src", "probs_cur", "race_cur", "age_cur", "race_label",
)
CHUNK = 8


def score_reference(rows: Sequence[EvalRow], locator: ImageLocator, out_dir: Path,
                    classifiers: Any | None) -> list[dict[str, str]]:
    """Find and score the real images of every row not yet in reference.csv; returns every line."""
    with AppendOnlyTable(out_dir / "reference.csv", REFERENCE_COLUMNS, key="key") as table:
        pending = [r for r in rows if r.key not in table.done_keys]
        for start in range(0, len(pending), CHUNK):
            found: list[tuple[EvalRow, dict[str, Any], Any, Any]] = []
            for row in pending[start: start + CHUNK]:
                line: dict[str, Any] = {"key": row.key, "index": row.index, "instruction": row.instruction,
                                        "race_label": row.extra.get("race", "")}
                try:
                    past, current = locator.find(row.past_dicom_id, "past"), locator.find(row.current_dicom_id,
                                                                                           "current")
                    line |= {"past_path": str(past), "current_path": str(current)}
                    _, src = load_display(past)
                    _, cur = load_display(current)
                except Exception as exc:  # a missing, corrupt or oversized image skips its row, never the run
                    table.append(line | {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"[:300]})
                    continue
                found.append((row, line, src, cur))
            if classifiers is not None and found:
                images = [img for _, _, src, cur in found for img in (src, cur)]
                probs, race, age = classifiers.pathology(images), classifiers.race(images), classifiers.age(images)
                for i, (_, line, _, _) in enumerate(found):
                    for side, j in (("src", 2 * i), ("cur", 2 * i + 1)):
                        enc = encode_scores(probs[j], race[j], float(age[j]))
                        line |= {f"probs_{side}": enc["probs"], f"race_{side}": enc["race"], f"age_{side}": enc["age"]}
            for _, line, _, _ in found:
                table.append(line | {"status": "ok", "reason": ""})
        return list(table.rows)


def parse_probs(text: str) -> dict[str, float]:
    return {str(k): float(v) for k, v in json.loads(text).items()} if text else {}
