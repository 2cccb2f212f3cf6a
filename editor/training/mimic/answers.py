"""MIMIC-Diff-VQA answers -> edit instructions: the difference-answer parser, the v2 detail (location and
severity) from the same study's single-image questions, and the instruction rows of one pair (v1 or v2),
all through the editor's own grammar."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Literal

from editor.instructions import (
    FILLER_WORDS,
    FindingSpec,
    InstructionError,
    ParsedInstruction,
    normalise_location,
    normalise_severity,
    parse_finding_phrase,
    parse_instruction,
)


@dataclass
class Difference:
    added: list[FindingSpec] = field(default_factory=list)
    removed: list[FindingSpec] = field(default_factory=list)
    changes: list[ParsedInstruction] = field(default_factory=list)
    unknown_findings: list[str] = field(default_factory=list)
    unknown_levels: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)  # sentences of no known form
    nothing_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changes)


_ADDED = re.compile(r"^the main image has (?:an |some )?additional findings? of (?P<list>.+?)"
                    r"(?: than the reference image)?$")
_REMOVED = re.compile(r"^the main image is missing (?:the |a )?findings? of (?P<list>.+?)"
                      r"(?: than the reference image)?$")
_LEVEL = re.compile(r"^the level of (?P<finding>.+?) has changed from (?P<levels>.+)$")
_NOTHING = re.compile(r"^nothing (?:has )?changed$")
_LIST = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")


def _sentences(answer: str) -> list[str]:
    text = re.sub(r"\s+", " ", answer.strip().lower())
    return [s.strip() for s in re.split(r"\.(?:\s+|$)", text) if s.strip()]


def _finding_list(text: str, diff: Difference) -> list[FindingSpec]:
    specs: list[FindingSpec] = []
    for phrase in _LIST.split(text):
        if not phrase.strip():
            continue
        try:
            spec = parse_finding_phrase(phrase)
        except InstructionError:
            diff.unknown_findings.append(phrase.strip())
            continue
        if spec.name not in {s.name for s in specs}:
            specs.append(spec)
    return specs


def parse_difference_answer(answer: str) -> Difference:
    """Parse one MIMIC-Diff-VQA difference answer (see the module docstring for the forms)."""
    diff = Difference()
    for sentence in _sentences(answer):
        if _NOTHING.match(sentence):
            diff.nothing_changed = True
        elif m := _ADDED.match(sentence):
            diff.added += _finding_list(m.group("list"), diff)
        elif m := _REMOVED.match(sentence):
            diff.removed += _finding_list(m.group("list"), diff)
        elif m := _LEVEL.match(sentence):
            finding = m.group("finding").strip()
            try:
                parse_finding_phrase(finding, allow_severity=False)
            except InstructionError:
                diff.unknown_findings.append(finding)
                continue
            try:
                diff.changes.append(parse_instruction(f"change the level of {finding} from {m.group('levels')}"))
            except InstructionError:
                diff.unknown_levels.append(m.group("levels").strip())
        else:
            diff.unparsed.append(sentence)
    return diff


# Single-image questions that carry v2 detail for one finding of one study.
_LOCATION_Q = re.compile(r"^where (?:in the image )?(?:is|are) the (?P<finding>.+?) located\??$")
_LEVEL_Q = re.compile(r"^(?:what level is the|what is the level of the?) (?P<finding>.+?)\??$")


def _location_words(answer: str) -> tuple[str, ...]:
    words = [w for w in re.split(r"[\s,;/]+", answer.strip().lower()) if w and w not in FILLER_WORDS
             and w not in ("and", "both")]
    keep: list[str] = []
    for w in words:
        try:
            normalise_location([w])
        except InstructionError:
            continue  # a word the grammar has no location for (e.g. 'costophrenic'): not a location
        keep.append(w)
    if "both" in answer.lower().split():
        keep.append("bilateral")
    try:
        return normalise_location(keep)
    except InstructionError:
        return ()  # contradictory (bilateral and one side): say nothing rather than guess


@dataclass
class StudyDetails:
    """v2 detail per (study_id, finding): location words and severity from single-image questions."""

    location: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    severity: dict[tuple[str, str], str] = field(default_factory=dict)

    def add_question(self, study: str, question: str, answer: str) -> None:
        q = re.sub(r"\s+", " ", question.strip().lower())
        if m := _LOCATION_Q.match(q):
            name = _single_finding(m.group("finding"))
            loc = _location_words(answer) if name else ()
            if name and loc:
                self.location.setdefault((study, name), loc)
        elif m := _LEVEL_Q.match(q):
            name = _single_finding(m.group("finding"))
            if name:
                with contextlib.suppress(InstructionError):  # an unknown level word: no severity
                    self.severity.setdefault((study, name), normalise_severity(answer.strip().rstrip(".")))

    def complete(self, study: str, spec: FindingSpec) -> FindingSpec:
        loc = spec.location or self.location.get((study, spec.name), ())
        sev = spec.severity or self.severity.get((study, spec.name))
        return FindingSpec(spec.name, loc, sev)


def _single_finding(phrase: str) -> str | None:
    try:
        return parse_finding_phrase(phrase).name
    except InstructionError:
        return None


def instruction_rows(diff: Difference, current: str, past: str, details: StudyDetails,
                     v2: bool) -> list[tuple[ParsedInstruction, str, str]]:
    """(instruction, location column, severity column) rows for one pair."""
    out: list[tuple[ParsedInstruction, str, str]] = []
    if not v2:
        names_add = [s.name for s in diff.added]
        names_rem = [s.name for s in diff.removed]
        if names_add:
            out.append((ParsedInstruction.add(names_add), "", ""))
        if names_rem:
            out.append((ParsedInstruction.remove(names_rem), "", ""))
        for ch in diff.changes:  # v1 drops any location the answer gave
            out.append((ParsedInstruction.change(ch.findings[0].name, str(ch.level_from), str(ch.level_to)), "", ""))
        return out
    groups: tuple[tuple[Literal["add", "remove"], list[FindingSpec], str], ...] = (
        ("add", diff.added, current), ("remove", diff.removed, past))
    for op, specs, study in groups:
        for spec in specs:
            full = details.complete(study, spec)
            out.append((ParsedInstruction(op, (full,)), " ".join(full.location), full.severity or ""))
    for ch in diff.changes:
        spec = details.complete(current, FindingSpec(ch.findings[0].name, ch.findings[0].location))
        parsed = ParsedInstruction("change", (spec,), ch.level_from, ch.level_to)
        out.append((parsed, " ".join(spec.location), str(ch.level_to)))
    return out
