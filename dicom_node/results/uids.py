"""Deterministic UIDs: the same job (idempotency key) always gets the same series / instance UIDs.

A resend of the same job therefore reuses the UIDs and the PACS de-duplicates instead of storing a
second copy. Default root is the UUID-derived root 2.25 (PS3.5 B.2): 2.25.<128-bit integer from a
hash of key + purpose>. With a configured organisational root the integer is shortened so the whole
UID stays within the 64-character limit.
"""

from __future__ import annotations

import hashlib
import re

UUID_ROOT = "2.25"
MAX_UID_LENGTH = 64
_ROOT_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def validate_root(root: str) -> str:
    root = root.strip().rstrip(".")
    if not _ROOT_PATTERN.match(root) or len(root) > MAX_UID_LENGTH - 2:
        raise ValueError(f"invalid UID root {root!r}: dotted numbers without leading zeros, < 63 chars")
    return root


def derive_uid(job_key: str, purpose: str, root: str | None = None) -> str:
    """UID for `purpose` (e.g. "seg.series") of the job with idempotency key `job_key`."""
    digest = hashlib.sha256(f"{job_key}\x00{purpose}".encode()).digest()
    number = int.from_bytes(digest[:16], "big")  # 128 bits, as a UUID would carry
    if root is None or validate_root(root) == UUID_ROOT:
        return f"{UUID_ROOT}.{number}"
    root = validate_root(root)
    room = MAX_UID_LENGTH - len(root) - 1
    text = str(number)[:room].lstrip("0") or "1"  # a component must not start with 0
    return f"{root}.{text}"


def series_number(job_key: str, kind_index: int) -> int:
    """Series Number in 1001..9995: stable per job, the last digit names the object kind."""
    bucket = int(hashlib.sha256(job_key.encode()).hexdigest()[:8], 16) % 899 + 100
    return bucket * 10 + kind_index
