"""One way to turn configuration + a request's overrides into edit parameters, and one job key.

Every path that edits — `x2x edit`, `x2x batch`, a C-STORE study (called-AE rule, private tag,
attribute), `POST /jobs` — calls `resolve_params(settings, overrides)` and then `job_key(...)`. The
same image, instruction, seed and parameters therefore give the same key on every path, and the key
is what the output UIDs are derived from (dicom_node.results.uids), so a PACS de-duplicates a resend
however it was made.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from dicom_node.config import Settings
from editor import EditParams


class InvalidEditParams(ValueError):
    """Overrides that EditParams refuses (message names the field and the allowed values)."""


def resolve_params(settings: Settings, overrides: Mapping[str, Any] | None = None) -> EditParams:
    """`[edit]` of the configuration with `overrides` applied (None values mean "not given")."""
    values = settings.edit.params_dict()
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    try:
        return EditParams.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise InvalidEditParams(str(exc)) from exc


def default_seed(settings: Settings, seed: int | None = None) -> int:
    return int(settings.edit.seed if seed is None else seed)


def job_key(sop_instance_uid: str, instruction: str, model_hash: str, seed: int, params: EditParams) -> str:
    """Idempotency key of one edit: sha256 over the source SOP UID, the instruction, the model's weights
    hash, the seed and every edit parameter."""
    payload = json.dumps(
        {
            "sop": sop_instance_uid,
            "instruction": instruction,
            "model": model_hash,
            "seed": int(seed),
            "params": params.to_dict(),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()
