"""Parser for the MIMIC-EDIT-INSTRUCTION grammar, with v2 location and severity.

    Add the finding of X.            Add the findings of X, Y and Z.
    Remove the finding(s) of ...     Change the level of X from A to B.
    v2: Add the finding of small right pleural effusion.
        Add the finding of moderate pleural effusion in the left lower lung.

Findings come from the closed vocabulary in editor/vocabulary.py and are matched as whole words (longest
phrase first); every other word of a finding phrase must be a known severity, location or filler word.
Anything else raises `InstructionError` — never a silent fallback (the research code's substring match
is the trap this avoids). `ParsedInstruction.canonical()` renders a sentence that parses back to an equal
object: severity, then location words, then the canonical finding name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from editor.vocabulary import PHRASES, InstructionError, lookup_finding, normalise_words, suggest

__all__ = [
    "FILLER_WORDS",
    "LOCATION_WORDS",
    "SEVERITY_WORDS",
    "FindingSpec",
    "InstructionError",
    "ParsedInstruction",
    "normalise_location",
    "normalise_severity",
    "parse_finding_phrase",
    "parse_instruction",
]

Operation = Literal["add", "remove", "change"]

# Canonical location words, in the order canonical() renders them (side first, then zone).
LOCATION_WORDS: tuple[str, ...] = (
    "left", "right", "bilateral", "upper", "middle", "lower", "base", "apical", "retrocardiac", "perihilar",
)
_LOCATION_SYNONYMS: dict[str, tuple[str, ...]] = {
    **{w: (w,) for w in LOCATION_WORDS},
    "both": ("bilateral",),
    "bilaterally": ("bilateral",),
    "mid": ("middle",),
    "basal": ("base",),
    "basilar": ("base",),
    "bases": ("base",),
    "bibasilar": ("bilateral", "base"),
    "bibasal": ("bilateral", "base"),
    "apex": ("apical",),
    "apices": ("apical",),
    "biapical": ("bilateral", "apical"),
}

# Severity / level words (single); "A to B" of two of them is one compound level, written "A-to-B".
SEVERITY_WORDS: tuple[str, ...] = (
    "minimal", "trace", "tiny", "small", "mild", "moderate", "large", "severe", "massive",
)

# Words that may surround a finding without changing its meaning ("... in the left lower lung").
FILLER_WORDS: frozenset[str] = frozenset(
    {"in", "the", "of", "at", "on", "a", "an", "lung", "lungs", "lobe", "lobes", "zone", "zones",
     "field", "fields", "side", "sided", "hemithorax", "region", "area"}
)

_MAX_PHRASE_WORDS = max(len(p.split()) for p in PHRASES)


def normalise_severity(text: str) -> str:
    """'Mild to moderate' / 'mild-to-moderate' -> 'mild-to-moderate'; unknown -> InstructionError."""
    words = [w for w in re.split(r"[\s\-]+", text.strip().lower()) if w]
    if len(words) == 1 and words[0] in SEVERITY_WORDS:
        return words[0]
    if len(words) == 3 and words[1] == "to" and words[0] in SEVERITY_WORDS and words[2] in SEVERITY_WORDS:
        return f"{words[0]}-to-{words[2]}"
    close = difflib.get_close_matches(" ".join(words), SEVERITY_WORDS, n=1)
    raise InstructionError(f"unknown severity/level {text!r}", close[0] if close else None)


def normalise_location(words: Iterable[str]) -> tuple[str, ...]:
    """Map location words to canonical ones, merge left+right into bilateral, sort canonically."""
    out: set[str] = set()
    for word in words:
        mapped = _LOCATION_SYNONYMS.get(normalise_words(word))
        if mapped is None:
            close = difflib.get_close_matches(normalise_words(word), list(_LOCATION_SYNONYMS), n=1)
            raise InstructionError(f"unknown location word {word!r}", close[0] if close else None)
        out.update(mapped)
    if {"left", "right"} <= out:
        out -= {"left", "right"}
        out.add("bilateral")
    if "bilateral" in out and out & {"left", "right"}:
        raise InstructionError(f"contradictory location {sorted(out)}: bilateral and one side")
    return tuple(w for w in LOCATION_WORDS if w in out)


@dataclass(frozen=True)
class FindingSpec:
    """One finding of an instruction; construction canonicalises name, location and severity."""

    name: str
    location: tuple[str, ...] = ()
    severity: str | None = None

    def __post_init__(self) -> None:
        # Frozen: canonicalise through object.__setattr__ so equal meanings compare equal.
        object.__setattr__(self, "name", lookup_finding(self.name).name)
        object.__setattr__(self, "location", normalise_location(self.location))
        if self.severity is not None:
            object.__setattr__(self, "severity", normalise_severity(self.severity))

    def phrase(self) -> str:
        return " ".join([*([self.severity] if self.severity else []), *self.location, self.name])


@dataclass(frozen=True)
class ParsedInstruction:
    operation: Operation
    findings: tuple[FindingSpec, ...]
    level_from: str | None = None
    level_to: str | None = None

    def __post_init__(self) -> None:
        if self.operation not in ("add", "remove", "change"):
            raise InstructionError(f"unknown operation {self.operation!r}")
        if not self.findings:
            raise InstructionError("an instruction needs at least one finding")
        object.__setattr__(self, "findings", tuple(self.findings))
        if self.operation == "change":
            if len(self.findings) != 1 or self.level_from is None or self.level_to is None:
                raise InstructionError("'change' needs exactly one finding and both levels")
            object.__setattr__(self, "level_from", normalise_severity(self.level_from))
            object.__setattr__(self, "level_to", normalise_severity(self.level_to))
        elif self.level_from is not None or self.level_to is not None:
            raise InstructionError(f"levels only belong to 'change', not {self.operation!r}")

    # -- constructors used by the dataset builder -------------------------------------------------
    @classmethod
    def add(cls, names: str | Iterable[str], *, location: Iterable[str] = (),
            severity: str | None = None) -> ParsedInstruction:
        return cls("add", _specs(names, location, severity))

    @classmethod
    def remove(cls, names: str | Iterable[str], *, location: Iterable[str] = (),
               severity: str | None = None) -> ParsedInstruction:
        return cls("remove", _specs(names, location, severity))

    @classmethod
    def change(cls, name: str, level_from: str, level_to: str, *,
               location: Iterable[str] = ()) -> ParsedInstruction:
        return cls("change", (FindingSpec(name, tuple(location)),), level_from, level_to)

    # -- views ------------------------------------------------------------------------------------
    @property
    def finding_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.findings)

    @property
    def locations(self) -> set[str]:
        return {word for f in self.findings for word in f.location}

    def canonical(self) -> str:
        if self.operation == "change":
            return (f"Change the level of {self.findings[0].phrase()} "
                    f"from {self.level_from} to {self.level_to}.")
        phrases = [f.phrase() for f in self.findings]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        noun = "finding" if len(phrases) == 1 else "findings"
        return f"{self.operation.capitalize()} the {noun} of {listed}."

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "findings": [
                {"name": f.name, "location": list(f.location), "severity": f.severity} for f in self.findings
            ],
            "level_from": self.level_from,
            "level_to": self.level_to,
            "canonical": self.canonical(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParsedInstruction:
        findings = tuple(
            FindingSpec(f["name"], tuple(f.get("location", ())), f.get("severity")) for f in d["findings"]
        )
        return cls(d["operation"], findings, d.get("level_from"), d.get("level_to"))


def _specs(names: str | Iterable[str], location: Iterable[str], severity: str | None) -> tuple[FindingSpec, ...]:
    name_list = [names] if isinstance(names, str) else list(names)
    loc = tuple(location)
    return tuple(FindingSpec(n, loc, severity) for n in name_list)


# ---------------------------------------------------------------------------------------------------
# Parsing

_ADD_REMOVE = re.compile(r"^(add|remove) the findings? of (?P<body>.+)$")
_CHANGE = re.compile(r"^change the level of (?P<finding>.+?) from (?P<levels>.+)$")
_LIST_SPLIT = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")


def _normalise_sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().lower())
    return re.sub(r"\s*[.!]+$", "", text).strip()


def _tokens(phrase: str) -> list[str]:
    """Words of a phrase; hyphens split words except in compound levels such as 'mild-to-moderate'."""
    out: list[str] = []
    for raw in phrase.split():
        raw = raw.strip(",;:")
        m = re.fullmatch(r"([a-z]+)-to-([a-z]+)", raw)
        if m and m.group(1) in SEVERITY_WORDS and m.group(2) in SEVERITY_WORDS:
            out.append(raw)
        else:
            out.extend(w for w in re.split(r"[\-_]+", raw) if w)
    return out


def _find_finding(tokens: list[str]) -> list[tuple[int, int, str]]:
    """Greedy left-to-right longest whole-word matches of vocabulary phrases: (start, end, name)."""
    found: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        for length in range(min(_MAX_PHRASE_WORDS, len(tokens) - i), 0, -1):
            name = PHRASES.get(" ".join(tokens[i:i + length]))
            if name is not None:
                found.append((i, i + length, name))
                i += length
                break
        else:
            i += 1
    return found


def _is_modifier(token: str) -> bool:
    return (token in _LOCATION_SYNONYMS or token in SEVERITY_WORDS or token in FILLER_WORDS
            or token == "to" or "-to-" in token)


def parse_finding_phrase(phrase: str, *, allow_severity: bool = True) -> FindingSpec:
    """'small right pleural effusion' / 'pleural effusion in the left lower lung' -> FindingSpec."""
    tokens = _tokens(phrase)
    matches = _find_finding(tokens)
    if not matches:
        core = " ".join(t for t in tokens if not _is_modifier(t)) or phrase
        raise InstructionError(f"unknown finding {phrase.strip()!r}", suggest(core))
    if len(matches) > 1:
        names = " and ".join(m[2] for m in matches)
        raise InstructionError(f"more than one finding in {phrase.strip()!r}; separate them with ',' or 'and'",
                               names)
    start, end, name = matches[0]
    rest = tokens[:start] + tokens[end:]
    location: list[str] = []
    severities: list[str] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        # "mild to moderate" written with spaces is one compound level.
        if (tok in SEVERITY_WORDS and i + 2 < len(rest) and rest[i + 1] == "to"
                and rest[i + 2] in SEVERITY_WORDS):
            severities.append(f"{tok}-to-{rest[i + 2]}")
            i += 3
            continue
        if tok in SEVERITY_WORDS or "-to-" in tok:
            severities.append(normalise_severity(tok))
        elif tok in _LOCATION_SYNONYMS:
            location.append(tok)
        elif tok not in FILLER_WORDS:
            close = difflib.get_close_matches(tok, [*_LOCATION_SYNONYMS, *SEVERITY_WORDS], n=1)
            raise InstructionError(f"unknown word {tok!r} in finding phrase {phrase.strip()!r}",
                                   close[0] if close else None)
        i += 1
    if len(severities) > 1:
        raise InstructionError(f"more than one severity in {phrase.strip()!r}: {severities}")
    if severities and not allow_severity:
        raise InstructionError(f"the finding of a 'change' takes no severity; put levels after 'from': {phrase!r}")
    return FindingSpec(name, tuple(location), severities[0] if severities else None)


def _parse_levels(text: str) -> tuple[str, str]:
    """'mild to moderate' -> (mild, moderate); compound levels must be unambiguous ('A-to-B')."""
    tokens = _tokens(text)
    splits: list[tuple[str, str]] = []
    for i, tok in enumerate(tokens):
        if tok != "to":
            continue
        try:
            splits.append((normalise_severity(" ".join(tokens[:i])), normalise_severity(" ".join(tokens[i + 1:]))))
        except InstructionError:
            continue
    if len(splits) == 1:
        return splits[0]
    if not splits:
        raise InstructionError(f"cannot read levels 'from {text}': expected 'from A to B' with A, B in "
                               f"{', '.join(SEVERITY_WORDS)}")
    raise InstructionError(f"ambiguous levels 'from {text}'; write compound levels as 'mild-to-moderate'",
                           f"{splits[0][0]} to {splits[0][1]}")


def parse_instruction(text: str) -> ParsedInstruction:
    """Parse one instruction sentence; raises InstructionError (with .suggestion) when it cannot."""
    if not isinstance(text, str) or not text.strip():
        raise InstructionError("empty instruction")
    sentence = _normalise_sentence(text)
    m = _ADD_REMOVE.match(sentence)
    if m:
        items = [p for p in _LIST_SPLIT.split(m.group("body"))]
        if any(not p.strip() for p in items):
            raise InstructionError(f"empty item in finding list {m.group('body')!r}")
        op: Operation = "add" if m.group(1) == "add" else "remove"
        return ParsedInstruction(op, tuple(parse_finding_phrase(p) for p in items))
    m = _CHANGE.match(sentence)
    if m:
        spec = parse_finding_phrase(m.group("finding"), allow_severity=False)
        level_from, level_to = _parse_levels(m.group("levels"))
        return ParsedInstruction("change", (spec,), level_from, level_to)
    raise InstructionError(f"not an edit instruction: {text.strip()!r}", _grammar_suggestion(sentence))


def _grammar_suggestion(sentence: str) -> str | None:
    """For 'add pleural effusion' and similar near-misses, the grammatical sentence (if it parses)."""
    m = re.match(r"^(add|remove)\s+(?:the\s+)?(?:findings?\s+(?:of\s+)?)?(?P<body>.+)$", sentence)
    if not m:
        return ("Add the finding of X. / Remove the finding of X. / "
                "Change the level of X from A to B.")
    try:
        return parse_instruction(f"{m.group(1)} the finding of {m.group('body')}").canonical()
    except InstructionError:
        return None
