"""An EditResult as one file, so that the edit and what is made of it can run in different processes
(the node edits in one stage and encodes the DICOM objects in the next).

One .npz (numpy's zip of .npy arrays, read with `allow_pickle=False`: a damaged or foreign file is an
error, never code) holding the arrays exactly as the edit left them -- the counterfactual in the source's
stored dtype, relevance, guidance, mask, each finding's mask, the display image -- and one JSON entry
with everything else. zip checks each member's CRC as it is read, so a file torn by a crash is refused
(EditResultFileError) instead of read as wrong pixels.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from editor.instructions import ParsedInstruction
from editor.types import EditParams, EditResult

FORMAT = "x2x-edit-result/1"
_ARRAYS = ("counterfactual", "relevance", "guidance", "mask")
_FINDING = "finding_mask_"


class EditResultFileError(ValueError):
    """The file is missing, torn, or not an edit result of this format."""


def save_edit_result(result: EditResult, path: Path) -> Path:
    """Write `result` to `path` (via a temporary name and a rename: the file is whole or absent).
    Not fsynced: it is a hand-over, not a record -- a file lost in a crash is edited again."""
    names = list(result.finding_masks)
    meta = {
        "format": FORMAT,
        "instruction": result.instruction.to_dict(),
        "prompt": result.prompt,
        "prior_source": result.prior_source,
        "coverage": result.coverage,
        "seed": result.seed,
        "params": result.params.to_dict(),
        "model_id": result.model_id,
        "model_hash": result.model_hash,
        "timings": result.timings,
        "provenance": result.provenance,
        "finding_names": names,
    }
    arrays: dict[str, np.ndarray] = {name: getattr(result, name) for name in _ARRAYS}
    arrays |= {f"{_FINDING}{i}": mask for i, mask in enumerate(result.finding_masks.values())}
    if result.source_display is not None:
        arrays["source_display"] = result.source_display
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)  # uncompressed: the arrays are read back once, moments later
    tmp.replace(path)
    return path


def load_edit_result(path: Path) -> EditResult:
    """The EditResult saved at `path`; EditResultFileError when it is not there or not whole."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays: dict[str, Any] = {name: npz[name] for name in npz.files}
        meta = json.loads(bytes(arrays.pop("meta")).decode("utf-8"))
        if meta.get("format") != FORMAT:
            raise EditResultFileError(f"{path}: not an {FORMAT} file")
        names = meta["finding_names"]
        return EditResult(
            **{name: arrays[name] for name in _ARRAYS},
            finding_masks={name: arrays[f"{_FINDING}{i}"] for i, name in enumerate(names)},
            coverage=float(meta["coverage"]),
            instruction=ParsedInstruction.from_dict(meta["instruction"]),
            prior_source=meta["prior_source"],
            seed=int(meta["seed"]),
            params=EditParams.from_dict(meta["params"]),
            model_id=meta["model_id"],
            model_hash=meta["model_hash"],
            timings=meta["timings"],
            provenance=meta["provenance"],
            source_display=arrays.get("source_display"),
            prompt=meta["prompt"],
        )
    except EditResultFileError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise EditResultFileError(f"{path}: unreadable edit result ({type(exc).__name__}: {exc})") from exc
