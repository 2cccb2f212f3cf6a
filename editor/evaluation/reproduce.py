"""`x2x reproduce`: the paper's evaluation over the test split, in one resumable run.

    rows (rows.py) -> reference table: real images found and scored once (reference.py)
         -> per method: edit, score, one fsync'ed line per row (driver.py, methods.py)
         -> metrics + paired bootstrap CIs (metrics.py), FID (fid.py)
         -> report.json / report.md (report.py) + figure.png (figure.py)

Output folder:
    run.json                what the run is (table, split, seed, base parameters, model, classifiers);
                            a rerun with different settings is refused (use a new folder)
    reference.csv           per row: image paths, classifier outputs on past and current images
    <method>/method.json    the method's parameters (a rerun with other parameters is refused)
    <method>/edits.csv      per row: status, locality, classifier outputs on the counterfactual, ...
    <method>/images/<key>/  counterfactual.png, guidance.png, mask.png, result.json
    report.json, report.md, figure.png
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from editor.evaluation.driver import Progress, run_method
from editor.evaluation.figure import FigureRow, write_grid
from editor.evaluation.methods import PUBLISHED, REAL, Method
from editor.evaluation.metrics import LOCALITY_KEYS, ScoredRow, bootstrap, compute
from editor.evaluation.reference import parse_probs, score_reference
from editor.evaluation.report import CAVEATS, render_markdown, to_json
from editor.evaluation.rows import EvalRow, ImageLocator, read_rows
from editor.evaluation.xrv_weights import RACE_LABELS
from editor.types import EditParams

__all__ = ["ReproduceConfig", "RunMismatch", "run"]


class RunMismatch(ValueError):
    """The output folder holds a run with other settings."""


@dataclass
class ReproduceConfig:
    table: Path
    out: Path
    methods: list[Method]
    base_params: EditParams = field(default_factory=EditParams)
    split: str = "test"
    limit: int | None = None
    images_root: Path | None = None  # default: the table's folder
    jpg_root: Path | None = None
    metadata: Path | None = None
    seed: int = 0
    batch_size: int = 1
    bootstrap: int = 1000
    figure_rows: int = 8
    model: dict[str, Any] = field(default_factory=dict)  # model_id, weights_hash, kind (for run.json)


def _check(path: Path, wanted: dict[str, Any]) -> None:
    if path.exists():
        had = json.loads(path.read_text())
        diff = sorted(k for k in set(had) | set(wanted) if had.get(k) != wanted.get(k))
        if diff:
            raise RunMismatch(f"{path.parent} holds a run with other settings ({', '.join(diff)}); "
                              "use a new --out folder or the same settings")
    else:
        path.write_text(json.dumps(wanted, indent=2, sort_keys=True))


_RACE_INDEX = {name: i for i, name in enumerate(RACE_LABELS)}


def _race(text: str | None) -> int | None:
    return _RACE_INDEX.get(text or "")


def _race_label(text: str | None) -> int | None:
    """A recorded race, in this table's or MIMIC-IV's spelling (WHITE, BLACK/AFRICAN AMERICAN, ASIAN - ...)."""
    word = (text or "").strip().upper().replace("/", " ").replace("-", " ").split(" ")[0]
    return next((i for i, name in enumerate(RACE_LABELS) if name.upper() == word), None)


def _num(text: str | None) -> float | None:
    return float(text) if text not in (None, "", "nan") else None


def _scored(lines: list[dict[str, str]], reference: dict[str, dict[str, str]], *, real: bool) -> list[ScoredRow]:
    """ScoredRows of a method's done lines (or of the real current images when `real`)."""
    out = []
    for line in lines:
        ref = reference.get(line["key"], {})
        if (not real and line.get("status") != "done") or ref.get("status") != "ok":
            continue
        row = ScoredRow(key=line["key"], operation=line.get("operation", ""),
                        targets={k: int(v) for k, v in json.loads(line.get("targets") or "{}").items()},
                        race_src=_race(ref.get("race_src")), age_src=_num(ref.get("age_src")),
                        race_label=_race_label(ref.get("race_label")))
        if real:
            row.probs, row.race_cf, row.age_cf = (parse_probs(ref.get("probs_cur", "")), _race(ref.get("race_cur")),
                                                  _num(ref.get("age_cur")))
        else:
            row.probs, row.race_cf, row.age_cf = (parse_probs(line.get("probs", "")), _race(line.get("race")),
                                                  _num(line.get("age")))
            row.locality = {k: float(line[k]) for k in LOCALITY_KEYS if line.get(k) not in (None, "")}
        out.append(row)
    return out


def _real_lines(rows: list[EvalRow]) -> list[dict[str, str]]:
    from editor.evaluation.metrics import pathology_targets
    from editor.instructions import InstructionError, parse_instruction

    out = []
    for row in rows:
        try:
            parsed = parse_instruction(row.instruction)
        except InstructionError:
            continue
        out.append({"key": row.key, "operation": parsed.operation,
                    "targets": json.dumps(pathology_targets(parsed))})
    return out


def _fid(lines: list[dict[str, str]], folder: Path, reference: dict[str, dict[str, str]],
         classifiers: Any) -> tuple[float, int]:
    from editor.evaluation.driver import load_display
    from editor.evaluation.fid import frechet_distance

    done = [ln for ln in lines if ln.get("status") == "done" and reference.get(ln["key"], {}).get("status") == "ok"]
    if classifiers is None or len(done) < 2:
        return float("nan"), len(done)
    cfs = [load_display(folder / "images" / ln["key"] / "counterfactual.png")[1] for ln in done]
    reals = [load_display(Path(reference[ln["key"]]["current_path"]))[1] for ln in done]
    return frechet_distance(classifiers.features(cfs), classifiers.features(reals)), len(done)


def _figure(cfg: ReproduceConfig, rows: list[EvalRow], reference: dict[str, dict[str, str]],
            per_method: dict[str, list[dict[str, str]]]) -> str | None:
    from editor.evaluation.driver import load_display

    picked = [r for r in rows if reference.get(r.key, {}).get("status") == "ok"][: cfg.figure_rows]
    if not picked or cfg.figure_rows <= 0:
        return None
    fig_rows = []
    for row in picked:
        ref = reference[row.key]
        panels: list[tuple[np.ndarray | None, np.ndarray | None, float]] = []
        for method in cfg.methods:
            folder = cfg.out / method.name / "images" / row.key
            done = any(ln["key"] == row.key and ln.get("status") == "done" for ln in per_method[method.name])
            if not done:
                panels.append((None, None, 0.0))
                continue
            guidance = load_display(folder / "guidance.png")[1]
            panels.append((load_display(folder / "counterfactual.png")[1], guidance,
                           float(method.params(cfg.base_params).tau)))
        fig_rows.append(FigureRow(row.instruction, load_display(Path(ref["past_path"]))[1],
                                  load_display(Path(ref["current_path"]))[1], panels))
    write_grid(cfg.out / "figure.png", fig_rows, [m.name for m in cfg.methods])
    return "figure.png"


def run(cfg: ReproduceConfig, editor: Any | Callable[[], Any], *, classifiers: Any | None = None,
        classifier_reason: str = "", progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) the evaluation; writes the output folder and returns the report."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(cfg.table, split=cfg.split, limit=cfg.limit)
    if not rows:
        raise ValueError(f"{cfg.table}: no rows in split {cfg.split!r}")
    root = cfg.images_root or (cfg.table if cfg.table.is_dir() else cfg.table.parent)
    locator = ImageLocator(root, jpg_root=cfg.jpg_root, metadata=cfg.metadata)
    shared = {k: v for k, v in cfg.base_params.to_dict().items() if k not in ("rse", "tau", "prior", "paper_prior_dir")}
    _check(cfg.out / "run.json", {
        "table": str(cfg.table.resolve()), "split": cfg.split, "seed": cfg.seed, "params": shared, "model": cfg.model,
        "classifiers": classifiers.describe() if classifiers is not None else None,
    })
    ref_lines = score_reference(rows, locator, cfg.out, classifiers)
    reference = {ln["key"]: ln for ln in ref_lines}
    sources = {k: Path(v["past_path"]) for k, v in reference.items() if v.get("status") == "ok"}
    per_method: dict[str, list[dict[str, str]]] = {}
    for method in cfg.methods:
        (cfg.out / method.name).mkdir(parents=True, exist_ok=True)
        _check(cfg.out / method.name / "method.json",
               {"name": method.name, "label": method.label, "params": method.params(cfg.base_params).to_dict()})
        per_method[method.name] = run_method(method, rows, sources, editor=editor, base_params=cfg.base_params,
                                             seed=cfg.seed, out_dir=cfg.out, classifiers=classifiers,
                                             batch_size=cfg.batch_size, progress=progress)
    return _report(cfg, rows, reference, per_method, classifiers, classifier_reason)


def _report(cfg: ReproduceConfig, rows: list[EvalRow], reference: dict[str, dict[str, str]],
            per_method: dict[str, list[dict[str, str]]], classifiers: Any | None, reason: str) -> dict[str, Any]:
    wanted = {r.key for r in rows}
    scored: dict[str, list[ScoredRow]] = {
        m.name: _scored([ln for ln in per_method[m.name] if ln["key"] in wanted], reference, real=False)
        for m in cfg.methods}
    scored[REAL] = _scored(_real_lines(rows), reference, real=True)
    keys = [r.key for r in rows if reference.get(r.key, {}).get("status") == "ok"]
    cis = bootstrap(scored, keys, resamples=cfg.bootstrap, seed=cfg.seed)
    entries: list[dict[str, Any]] = [{
        "name": REAL, "label": "Real images (current image as the counterfactual)", "params": None,
        "metrics": compute(scored[REAL]), "ci": cis.get(REAL, {}), "status": {"ok": len(keys)},
        "published": PUBLISHED.get(REAL, {})}]
    for m in cfg.methods:
        lines = [ln for ln in per_method[m.name] if ln["key"] in wanted]
        fid, n_fid = _fid(lines, cfg.out / m.name, reference, classifiers)
        profiles = sorted({ln.get("input_profile", "") for ln in lines if ln.get("status") == "done"})
        entries.append({"name": m.name, "label": m.label, "params": m.params(cfg.base_params).to_dict(),
                        "metrics": compute(scored[m.name]), "ci": cis.get(m.name, {}), "fid": fid, "fid_images": n_fid,
                        "status": dict(Counter(ln.get("status", "?") for ln in lines)),
                        "input_profiles": [p for p in profiles if p] or ["none reported by the editor"],
                        "prior_sources": dict(Counter(ln.get("prior_source", "") for ln in lines
                                                      if ln.get("status") == "done")),
                        "published": PUBLISHED.get(m.name, {})})
    skipped = Counter(v.get("reason", "")[:80] for k, v in reference.items() if k in wanted and v.get("status") != "ok")
    report: dict[str, Any] = {
        "kind": "x2x-reproduce", "synthetic": True,
        "dataset": {"table": str(cfg.table), "split": cfg.split, "limit": cfg.limit},
        "model": cfg.model,
        "classifiers": ({"computed": True, **classifiers.describe()} if classifiers is not None
                        else {"computed": False, "reason": reason or "no --classifiers folder given"}),
        "settings": {"seed": cfg.seed, "steps": cfg.base_params.steps, "bootstrap": cfg.bootstrap,
                     "batch_size": cfg.batch_size},
        "rows": {"total": len(rows), "usable": len(keys), "skipped": dict(skipped)},
        "methods": entries, "published": PUBLISHED, "caveats": list(CAVEATS), "notes": [],
    }
    report["figure"] = _figure(cfg, rows, reference, per_method)
    (cfg.out / "report.json").write_text(to_json(report))
    (cfg.out / "report.md").write_text(render_markdown(report))
    return report
