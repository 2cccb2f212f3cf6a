"""One interface for every destination type: `Sender.send(items) -> SendReport`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Union

from pydicom import dcmread
from pydicom.dataset import Dataset

SendItem = Union[Path, str, Dataset]


@dataclass
class SendReport:
    destination: str
    sent: list[str] = field(default_factory=list)  # SOP Instance UIDs accepted by the destination
    failed: dict[str, str] = field(default_factory=dict)  # SOP Instance UID (or "*") -> reason
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.sent)

    def error_summary(self) -> str:
        reasons = sorted(set(self.failed.values()))
        return f"{len(self.failed)} of {len(self.failed) + len(self.sent)} not delivered to " + (
            f"{self.destination}: " + "; ".join(reasons)
        )


class Sender(Protocol):
    name: str

    def send(self, items: Sequence[SendItem]) -> SendReport: ...


class SendError(Exception):
    """A destination that cannot be used at all (bad configuration)."""


def load(item: SendItem) -> Dataset:
    if isinstance(item, Dataset):
        return item
    return dcmread(item)
