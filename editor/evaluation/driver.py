"""Edit every row with one method, score it, and keep a per-row table that makes the run resumable.

For each method: rows without a line in `<out>/<method>/edits.csv` are edited in chunks of `batch_size`
through `edit_rows` (the one place edits happen), each result is scored (locality against its own mask,
the classifiers on the counterfactual) and its outputs written, then its line is appended and fsync'ed.
A rerun skips every row that already has a line (done, skipped or failed), so an interrupted run edits
only the rest; a row interrupted half way has no line and is redone (deterministic, same files).

The editor applies the model's own input profile inside `Editor.edit` (e.g. the `research` profile of
the published checkpoint); this driver never preprocesses. What the result's provenance says about the
profile is recorded per row (`input_profile`; empty when the editor reports none).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from editor.append_table import AppendOnlyTable
from editor.evaluation.methods import Method
from editor.evaluation.metrics import LOCALITY_KEYS, pathology_targets
from editor.evaluation.rows import EvalRow
from editor.evaluation.xrv_weights import RACE_LABELS, XRV_LABELS
from editor.instructions import InstructionError, ParsedInstruction, parse_instruction
from editor.types import EditParams, EditResult, SourceImage

__all__ = ["EDIT_COLUMNS", "EditItem", "edit_rows", "load_display", "quantise", "run_method"]

EDIT_COLUMNS = (
    "key", "index", "past_dicom_id", "current_dicom_id", "instruction", "canonical", "operation", "status",
    "reason", "seed", "prior_source", "rse_applied", "input_profile", "targets", "probs", "race", "age",
    *LOCALITY_KEYS, "seconds", "outputs",  # LOCALITY_KEYS include the mask's coverage
)
Progress = Callable[[str, int, int], None]


@dataclass
class EditItem:
    row: EvalRow
    source: SourceImage
    parsed: ParsedInstruction
    source_display: np.ndarray  # float64 [0, 1], 8-bit steps (what the classifiers and metrics see)


def quantise(display01: np.ndarray) -> np.ndarray:
    """Display values on the 8-bit grid the metrics, the classifiers and the saved PNGs share."""
    return np.asarray(np.round(np.clip(display01, 0.0, 1.0) * 255.0) / 255.0, dtype=np.float64)


def load_display(path: Path) -> tuple[SourceImage, np.ndarray]:
    """(SourceImage, quantised display image) of an image file, through the source's own display mapping."""
    from editor.preprocess import DisplayMapping
    from editor.source import source_from_file

    source = source_from_file(path)
    return source, quantise(DisplayMapping.from_source(source).to_display(source.pixels))


def edit_rows(editor: Any, items: Sequence[EditItem], params: EditParams, seed: int) -> list[EditResult | Exception]:
    """Edit a batch of rows: THE seam for batched editing.

    Today one `Editor.edit` call per row. A batched editor (several rows per UNet pass on a GPU) replaces
    this body with one call per chunk; the driver already hands over `batch_size` rows at a time and
    expects one result (or the exception that row raised) per item, in order."""
    out: list[EditResult | Exception] = []
    for item in items:
        try:
            out.append(editor.edit(item.source, item.parsed, seed=seed, params=params))
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:  # one bad row must not end a night-long run; it is recorded as failed
            out.append(exc)
    return out


def input_profile(result: EditResult) -> str:
    """What the editor's provenance says about the model's input profile (JSON), or '' when nothing."""
    found = {k: v for k, v in result.provenance.items() if "profile" in k.lower()}
    return json.dumps(found, sort_keys=True, default=str) if found else ""


def _locality(source: np.ndarray, cf: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    from editor.training.evaluate import image_metrics, ssim_map

    metrics = image_metrics(source, cf, mask)
    metrics["change_all"] = float(np.abs(cf - source).mean())
    metrics["ssim_all"] = float(ssim_map(source, cf).mean())
    return {k: float(v) for k, v in metrics.items()}


def _save(folder: Path, cf_display: np.ndarray, result: EditResult) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(cf_display * 255).astype(np.uint8)).save(folder / "counterfactual.png")
    Image.fromarray(np.round(np.clip(result.guidance, 0, 1) * 255).astype(np.uint8)).save(folder / "guidance.png")
    Image.fromarray(result.mask.astype(np.uint8) * 255).save(folder / "mask.png")
    (folder / "result.json").write_text(json.dumps(result.summary(), indent=2, default=str))
    return ["counterfactual.png", "guidance.png", "mask.png", "result.json"]


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else f"{value:.6g}")


def prepare(row: EvalRow, source_path: Path) -> EditItem | str:
    """The row ready to edit, or the reason it cannot be."""
    try:
        parsed = parse_instruction(row.instruction)
    except InstructionError as exc:
        return f"instruction: {exc}"
    try:
        source, display = load_display(source_path)
    except Exception as exc:  # corrupt / unsupported / oversized image: this row is skipped, the run goes on
        return f"past image: {type(exc).__name__}: {exc}"
    return EditItem(row, source, parsed, display)


def run_method(method: Method, rows: Sequence[EvalRow], sources: dict[str, Path], *, editor: Any,
               base_params: EditParams, seed: int, out_dir: Path, classifiers: Any | None,
               batch_size: int = 1, progress: Progress | None = None) -> list[dict[str, str]]:
    """Edit and score every row of `rows` not yet in `<out_dir>/<method>/edits.csv`; returns all its lines.

    `sources` maps row key -> past image path for the rows whose images were found (others are skipped
    with the reference table's reason). `editor` is an Editor or a zero-argument factory (called only
    when a row actually needs editing, so a finished run reloads no model)."""
    from editor.preprocess import DisplayMapping

    folder = out_dir / method.name
    folder.mkdir(parents=True, exist_ok=True)
    params = method.params(base_params)
    with AppendOnlyTable(folder / "edits.csv", EDIT_COLUMNS, key="key") as table:
        pending = [r for r in rows if r.key not in table.done_keys]
        done = len(rows) - len(pending)
        for start in range(0, len(pending), max(1, batch_size)):
            chunk = pending[start: start + max(1, batch_size)]
            items: list[EditItem] = []
            for row in chunk:
                base = {"key": row.key, "index": row.index, "past_dicom_id": row.past_dicom_id,
                        "current_dicom_id": row.current_dicom_id, "instruction": row.instruction, "seed": seed}
                prepared = prepare(row, sources[row.key]) if row.key in sources else "images not found"
                if isinstance(prepared, str):
                    table.append(base | {"status": "skipped", "reason": prepared[:300]})
                    done += 1
                else:
                    items.append(prepared)
            if not items:
                continue
            if callable(editor) and not hasattr(editor, "edit"):
                editor = editor()
            started = time.perf_counter()
            results = edit_rows(editor, items, params, seed)
            per_row = (time.perf_counter() - started) / len(items)
            cf_displays = [quantise(DisplayMapping.from_source(it.source).to_display(r.counterfactual))
                           if isinstance(r, EditResult) else None for it, r in zip(items, results, strict=True)]
            scores = _classify([c for c in cf_displays if c is not None], classifiers)
            for item, result, cf in zip(items, results, cf_displays, strict=True):
                row = item.row
                line: dict[str, Any] = {"key": row.key, "index": row.index, "past_dicom_id": row.past_dicom_id,
                                        "current_dicom_id": row.current_dicom_id, "instruction": row.instruction,
                                        "canonical": item.parsed.canonical(), "operation": item.parsed.operation,
                                        "seed": seed, "seconds": f"{per_row:.3f}",
                                        "targets": json.dumps(pathology_targets(item.parsed), sort_keys=True)}
                if not isinstance(result, EditResult) or cf is None:
                    line |= {"status": "failed", "reason": f"{type(result).__name__}: {result}"[:300]}
                else:
                    outputs = _save(folder / "images" / row.key, cf, result)
                    line |= {"status": "done", "reason": "", "prior_source": result.prior_source,
                             "rse_applied": result.provenance.get("rse_applied", ""),
                             "input_profile": input_profile(result),
                             "outputs": ";".join(f"images/{row.key}/{o}" for o in outputs)}
                    line |= {k: _fmt(v) for k, v in _locality(item.source_display, cf, result.mask).items()}
                    line |= scores.pop(0) if scores else {}
                table.append(line)
                done += 1
            if progress is not None:
                progress(method.name, done, len(rows))
        return list(table.rows)


def _classify(images: list[np.ndarray], classifiers: Any | None) -> list[dict[str, str]]:
    """Per image: JSON of the pathology outputs by label, the race index and the age (strings for the table)."""
    if classifiers is None or not images:
        return []
    probs, race, age = classifiers.pathology(images), classifiers.race(images), classifiers.age(images)
    return [encode_scores(p, r, a) for p, r, a in zip(probs, race, age, strict=True)]


def encode_scores(probs: np.ndarray, race: np.ndarray, age: float) -> dict[str, str]:
    by_label = {label: round(float(p), 6) for label, p in zip(XRV_LABELS, probs, strict=True) if not math.isnan(p)}
    return {"probs": json.dumps(by_label, sort_keys=True), "race": RACE_LABELS[int(np.argmax(race))],
            "age": f"{float(age):.4f}"}
