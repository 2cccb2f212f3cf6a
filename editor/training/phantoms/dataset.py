"""A phantom dataset on disk in the MIMIC-EDIT-INSTRUCTION layout (instructions.csv + images/<id>.png),
plus masks/<pair_id>.png (the ground-truth change) and phantoms.json; each pair's split is seeded."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from editor.training.phantoms.pairs import PairSpec, make_pair

SPLIT_FRACTIONS = (("train", 0.9), ("validate", 0.05), ("test", 0.05))


def _location_words(spec: PairSpec) -> str:
    return " ".join(spec.location)


def _split_for(seed: int, index: int) -> str:
    u = np.random.default_rng([seed, index, 7]).random()
    acc = 0.0
    for name, frac in SPLIT_FRACTIONS:
        acc += frac
        if u < acc:
            return name
    return SPLIT_FRACTIONS[-1][0]


def _write_pair(job: tuple[str, int, int, int]) -> tuple[dict[str, str], str]:
    """Draw and write pair `index`; returns its CSV row and its "operation finding" label."""
    from PIL import Image

    out_dir, seed, index, size = job
    out = Path(out_dir)
    pair = make_pair(seed, index, size)
    Image.fromarray(pair.past).save(out / "images" / f"{pair.past_id}.png")
    Image.fromarray(pair.current).save(out / "images" / f"{pair.current_id}.png")
    Image.fromarray((pair.mask * 255).astype(np.uint8)).save(out / "masks" / f"{pair.pair_id}.png")
    spec = pair.spec
    severity = spec.severity or (f"{spec.level_from} to {spec.level_to}" if spec.level_from else "")
    row = {
        "split": _split_for(seed, index),
        "current_dicom_id": pair.current_id,
        "past_dicom_id": pair.past_id,
        "instruction": pair.instruction,
        "location": _location_words(spec),
        "severity": severity,
        "pair_id": pair.pair_id,
    }
    return row, f"{spec.operation} {spec.finding}"


CSV_COLUMNS = ("split", "current_dicom_id", "past_dicom_id", "instruction", "location", "severity", "pair_id")


def write_dataset(out_dir: str | Path, *, n: int = 2000, size: int = 128, seed: int = 0,
                  workers: int = 1) -> dict[str, object]:
    """Write `n` pairs in the MIMIC-EDIT-INSTRUCTION layout (instructions.csv + images/<id>.png) plus
    masks/<pair_id>.png (ground-truth change) and phantoms.json. Same seed, same files, any `workers`."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, size) for i in range(n)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_pair, jobs, chunksize=32))
    else:
        results = [_write_pair(job) for job in jobs]
    counts: Counter[str] = Counter()
    for row, label in results:
        counts[label] += 1
        counts[f"split {row['split']}"] += 1
    with (out / "instructions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(row for row, _ in results)
    summary: dict[str, object] = {
        "kind": "x2x-phantoms",
        "seed": seed,
        "n": n,
        "size": size,
        "convention": "PA display: patient's left on the image's right; head at the top",
        "counts": dict(sorted(counts.items())),
        "synthetic": True,
    }
    (out / "phantoms.json").write_text(json.dumps(summary, indent=2))
    return summary
