"""What every configuration section shares: the error type, the strict section base, AE title checks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """An invalid configuration; the message is one line naming the key. `problems` holds one line per
    problem found (the message is the first, with a count of the others)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def check_ae_title(value: str) -> str:
    """A DICOM AE title: 1-16 characters, no backslash, not only spaces (PS3.5 AE)."""
    if not value.strip() or len(value) > 16 or "\\" in value:
        raise ValueError("AE title must be 1-16 characters without backslash")
    return value


class _Section(BaseModel):
    # A misspelt key must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid")
