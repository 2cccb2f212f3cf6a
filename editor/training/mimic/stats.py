"""What a build counted: rows read, pairs kept, rows and images written, and every dropped pair by reason
(`BuildStats`, written to stats.json), and the same as a rich table."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

DROP_REASONS = (
    "no_past_study", "duplicate_pair", "unparsed_answer", "no_difference", "unknown_finding",
    "unknown_level", "study_not_in_metadata", "lateral_only", "missing_image", "no_split",
)


@dataclass
class BuildStats:
    input_rows: int = 0
    difference_rows: int = 0
    pairs_kept: int = 0
    rows_written: int = 0
    images_written: int = 0
    images_existing: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> pairs
    per_operation: Counter = field(default_factory=Counter)  # add/remove/change -> rows
    per_finding: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # op -> finding -> n
    per_split: Counter = field(default_factory=Counter)
    unknown_findings: Counter = field(default_factory=Counter)  # phrase -> occurrences (dropped)
    pairs_dropped_by_unknown_finding: Counter = field(default_factory=Counter)  # phrase -> pairs dropped
    unknown_levels: Counter = field(default_factory=Counter)
    unparsed_sentences: Counter = field(default_factory=Counter)
    v2: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_rows": self.input_rows,
            "difference_rows": self.difference_rows,
            "pairs_kept": self.pairs_kept,
            "rows_written": self.rows_written,
            "images_written": self.images_written,
            "images_existing": self.images_existing,
            "v2": self.v2,
            "dropped": {r: self.dropped.get(r, 0) for r in DROP_REASONS},
            "per_operation": dict(self.per_operation),
            "per_finding": {op: dict(sorted(c.items())) for op, c in sorted(self.per_finding.items())},
            "per_split": dict(self.per_split),
            "unknown_findings": dict(self.unknown_findings.most_common()),
            "pairs_dropped_by_unknown_finding": dict(self.pairs_dropped_by_unknown_finding.most_common()),
            "unknown_levels": dict(self.unknown_levels.most_common()),
            "unparsed_sentences": dict(self.unparsed_sentences.most_common(50)),
        }


def stats_table(stats: BuildStats) -> Any:
    """A rich table of what was kept and dropped."""
    from rich.table import Table

    d = stats.to_dict()
    table = Table(title=f"MIMIC-EDIT-INSTRUCTION ({'v2' if stats.v2 else 'v1'})")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("input_rows", "difference_rows", "pairs_kept", "rows_written", "images_written"):
        table.add_row(key, str(d[key]))
    for op, n in sorted(d["per_operation"].items()):
        table.add_row(f"rows: {op}", str(n))
    for op, findings in d["per_finding"].items():
        for name, n in findings.items():
            table.add_row(f"  {op}: {name}", str(n))
    for split, n in sorted(d["per_split"].items()):
        table.add_row(f"split: {split}", str(n))
    for reason, n in d["dropped"].items():
        table.add_row(f"dropped pairs: {reason}", str(n))
    for phrase, n in list(d["unknown_findings"].items())[:20]:
        table.add_row(f"  unknown finding: {phrase}", str(n))
    return table
