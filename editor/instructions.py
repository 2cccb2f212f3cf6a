"""Parser for the MIMIC-EDIT-INSTRUCTION grammar, with v2 location and severity.

    Add the finding of X.            Add the findings of X, Y and Z.
    Remove the finding(s) of ...     Change the level of X from A to B.
    v2: Add the finding of small right pleural effusion.
        Add the finding of moderate pleural effusion in the left lower lung.

Findings come from the closed vocabulary in editor/vocabulary.py and are matched as whole words (longest
phrase first); every other word of a finding phrase must be a known severity, location or filler word.
Anything else raises `InstructionError` — never a silent fallback (the research code's substring match
is the trap this avoids).

Levels are MIMIC-Diff-VQA's 17 level words (`LEVEL_WORDS`, three of them multi-word: "moderate to
large", "moderate to severe", "mild to moderate") plus a few extras; inside "from A to B" a split into
two known levels wins over a split into an ad-hoc "A to B" range, so "from small to moderate to large"
reads (small, moderate to large). Location words are MIMIC-Diff-VQA's (ARCHITECTURE.md §3.1).

The parse drives priors, laterality and validation; it never rewrites what the model sees:
`ParsedInstruction.text` keeps the instruction as written (whitespace normalised) and `prompt` is what
the text encoder gets. `ParsedInstruction.canonical()` renders a sentence that parses back to an equal
object (severity, then location words, then the canonical finding name) — the dataset builder's form.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from editor.vocabulary import PHRASES, InstructionError, lookup_finding, normalise_words, suggest

__all__ = [
    "FILLER_WORDS",
    "LEVEL_WORDS",
    "LOCATION_WORDS",
    "SEVERITY_WORDS",
    "FindingSpec",
    "InstructionError",
    "ParsedInstruction",
    "normalise_location",
    "normalise_severity",
    "normalise_whitespace",
    "parse_finding_phrase",
    "parse_instruction",
]

Operation = Literal["add", "remove", "change"]

# Canonical location words, in the order canonical() renders them (side first, then zone, then place).
LOCATION_WORDS: tuple[str, ...] = (
    "left", "right", "bilateral", "upper", "middle", "lower", "base", "apical", "lateral", "retrocardiac",
    "perihilar", "pericardial", "pleural", "rib",
)
# MIMIC-Diff-VQA's location words (and a few common variants) -> canonical words. "lobe", "lung" and
# "area" are filler (below); "left-sided" splits into "left" + the filler "sided"; "mid to lower" is a
# range of two location words.
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
    "apicolateral": ("apical", "lateral"),
    "ribs": ("rib",),
}

# MIMIC-Diff-VQA's 17 level words, spelled as it spells them (multi-word levels with spaces) ...
MIMIC_LEVELS: tuple[str, ...] = (
    "moderately", "moderate", "acute", "mildly", "mild", "small", "severe", "moderate to large",
    "moderate to severe", "mild to moderate", "minimal", "subtle", "massive", "minimally", "increasing",
    "decreasing", "minor",
)
# ... plus this project's extras; every accepted level, single- and multi-word.
LEVEL_WORDS: tuple[str, ...] = (*MIMIC_LEVELS, "trace", "tiny", "large")
# Single-word levels: two of them joined by "to" also make a level ("small to moderate"), written
# "small-to-moderate" where a sentence needs it to be unambiguous.
SEVERITY_WORDS: tuple[str, ...] = tuple(w for w in LEVEL_WORDS if " " not in w)

# Words that may surround a finding without changing its meaning ("... in the left lower lung").
FILLER_WORDS: frozenset[str] = frozenset(
    {"in", "the", "of", "at", "on", "a", "an", "lung", "lungs", "lobe", "lobes", "zone", "zones",
     "field", "fields", "side", "sided", "hemithorax", "region", "area", "areas"}
)

_MAX_PHRASE_WORDS = max(len(p.split()) for p in PHRASES)


def normalise_whitespace(text: str) -> str:
    """The instruction as written, with runs of whitespace as one space and no outer spaces."""
    return " ".join(str(text).split())


def normalise_severity(text: str) -> str:
    """'Mild to moderate' / 'mild-to-moderate' -> 'mild to moderate'; unknown -> InstructionError."""
    words = [w for w in re.split(r"[\s\-]+", text.strip().lower()) if w]
    joined = " ".join(words)
    if joined in LEVEL_WORDS:
        return joined
    if len(words) == 3 and words[1] == "to" and words[0] in SEVERITY_WORDS and words[2] in SEVERITY_WORDS:
        return joined
    close = difflib.get_close_matches(joined, LEVEL_WORDS, n=1)
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
    # The instruction as written (whitespace normalised), when it came from text; not part of equality:
    # two wordings of one edit parse to equal objects.
    text: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.text is not None:
            object.__setattr__(self, "text", normalise_whitespace(self.text))
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

    @property
    def prompt(self) -> str:
        """What the text encoder sees: the instruction as written, else the canonical sentence."""
        return self.text if self.text else self.canonical()

    def canonical(self) -> str:
        if self.operation == "change":
            assert self.level_from is not None and self.level_to is not None
            return (f"Change the level of {self.findings[0].phrase()} "
                    f"from {_levels_text(self.level_from, self.level_to)}.")
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
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParsedInstruction:
        findings = tuple(
            FindingSpec(f["name"], tuple(f.get("location", ())), f.get("severity")) for f in d["findings"]
        )
        return cls(d["operation"], findings, d.get("level_from"), d.get("level_to"), text=d.get("text"))


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
    """Words of a phrase; hyphens split words ('mild-to-moderate' -> 'mild', 'to', 'moderate'), except
    that a hyphenated level range stays one token so that 'from mild-to-moderate to severe' is clear."""
    out: list[str] = []
    for raw in phrase.split():
        raw = raw.strip(",;:")
        m = re.fullmatch(r"([a-z]+)-to-([a-z]+)", raw)
        if m and m.group(1) in SEVERITY_WORDS and m.group(2) in SEVERITY_WORDS:
            out.append(raw)
        else:
            out.extend(w for w in re.split(r"[\-_]+", raw) if w)
    return out


def _levels_text(level_from: str, level_to: str) -> str:
    """'A to B' as written in MIMIC-Diff-VQA; multi-word levels hyphenated only where it is ambiguous."""
    spaced = f"{level_from} to {level_to}"
    try:
        if _parse_levels(spaced) == (level_from, level_to):
            return spaced
    except InstructionError:
        pass
    return f"{level_from.replace(' ', '-')} to {level_to.replace(' ', '-')}"


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


def _level_at(tokens: list[str], i: int) -> tuple[str, int] | None:
    """The level starting at tokens[i] (longest first: 'moderate to large' before 'moderate') and the
    number of tokens it spans, or None."""
    tok = tokens[i]
    if "-to-" in tok:
        return normalise_severity(tok), 1
    if tok not in SEVERITY_WORDS:
        return None
    if i + 2 < len(tokens) and tokens[i + 1] == "to" and tokens[i + 2] in SEVERITY_WORDS:
        return f"{tok} to {tokens[i + 2]}", 3
    return tok, 1


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
        level = _level_at(rest, i)
        if level is not None:
            severities.append(level[0])
            i += level[1]
            continue
        if tok in _LOCATION_SYNONYMS:
            location.append(tok)
        elif tok == "to" and location and i + 1 < len(rest) and rest[i + 1] in _LOCATION_SYNONYMS:
            pass  # a range of places: "mid to lower" = middle and lower
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
    """'mild to moderate' -> (mild, moderate); 'small to moderate to large' -> (small, moderate to large).

    Every 'to' is a candidate split; a split into two *known* levels (LEVEL_WORDS) wins over one that
    needs an ad-hoc range; what is still ambiguous is an error (write ranges as 'mild-to-moderate')."""
    tokens = _tokens(text)
    splits: list[tuple[str, str]] = []
    for i, tok in enumerate(tokens):
        if tok != "to":
            continue
        try:
            splits.append((normalise_severity(" ".join(tokens[:i])), normalise_severity(" ".join(tokens[i + 1:]))))
        except InstructionError:
            continue
    if len(splits) > 1:
        known = [s for s in splits if s[0] in LEVEL_WORDS and s[1] in LEVEL_WORDS]
        if len(known) == 1:
            return known[0]
    if len(splits) == 1:
        return splits[0]
    if not splits:
        raise InstructionError(f"cannot read levels 'from {text}': expected 'from A to B' with A, B in "
                               f"{', '.join(LEVEL_WORDS)}")
    raise InstructionError(f"ambiguous levels 'from {text}'; write ranges as 'mild-to-moderate'",
                           f"{splits[0][0].replace(' ', '-')} to {splits[0][1].replace(' ', '-')}")


def parse_instruction(text: str) -> ParsedInstruction:
    """Parse one instruction sentence; raises InstructionError (with .suggestion) when it cannot."""
    if not isinstance(text, str) or not text.strip():
        raise InstructionError("empty instruction")
    written = normalise_whitespace(text)
    sentence = _normalise_sentence(text)
    m = _ADD_REMOVE.match(sentence)
    if m:
        items = [p for p in _LIST_SPLIT.split(m.group("body"))]
        if any(not p.strip() for p in items):
            raise InstructionError(f"empty item in finding list {m.group('body')!r}")
        op: Operation = "add" if m.group(1) == "add" else "remove"
        return ParsedInstruction(op, tuple(parse_finding_phrase(p) for p in items), text=written)
    m = _CHANGE.match(sentence)
    if m:
        spec = parse_finding_phrase(m.group("finding"), allow_severity=False)
        level_from, level_to = _parse_levels(m.group("levels"))
        return ParsedInstruction("change", (spec,), level_from, level_to, text=written)
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
