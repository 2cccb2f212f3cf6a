"""Instruction grammar: parsing, whole-word vocabulary, suggestions, canonical round-trip (property tests)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editor.instructions import (
    LEVEL_WORDS,
    LOCATION_WORDS,
    SEVERITY_WORDS,
    FindingSpec,
    InstructionError,
    ParsedInstruction,
    parse_instruction,
)
from editor.vocabulary import FINDINGS, REGION_NAMES, RESEARCH_FINDINGS, lookup_finding
from tests.support.research_names import RESEARCH_31

MIMIC_DIFF_VQA_LEVELS = (
    "moderately", "moderate", "acute", "mildly", "mild", "small", "severe", "moderate to large",
    "moderate to severe", "mild to moderate", "minimal", "subtle", "massive", "minimally", "increasing",
    "decreasing", "minor",
)
MIMIC_DIFF_VQA_LOCATIONS = (
    "mid to lower", "left", "right", "retrocardiac", "pericardial", "bibasilar", "bilateral", "basilar",
    "apicolateral", "basal", "left-sided", "right-sided", "lobe", "lung", "area", "base", "apical", "pleural",
    "upper", "lower", "middle", "mid", "rib",
)


@pytest.mark.parametrize("name", RESEARCH_31)
def test_every_research_name_is_canonical_and_the_prompt_is_as_written(name: str) -> None:
    text = f"Add the finding of {name}."
    p = parse_instruction(text)
    assert p.finding_names == (name,)  # accepted verbatim, never rewritten
    assert p.prompt == text and p.text == text
    assert FINDINGS[name].research and FINDINGS[name].regions  # every finding has a region rule
    assert set(RESEARCH_31) == set(RESEARCH_FINDINGS)


def test_prompt_is_the_written_instruction_whitespace_normalised() -> None:
    p = parse_instruction("  Add the finding of   pneumonia in the\tright lower lobe.  ")
    assert p.prompt == "Add the finding of pneumonia in the right lower lobe."
    assert p.canonical() == "Add the finding of right lower pneumonia."  # the parse, not the prompt
    assert p == parse_instruction(p.canonical())  # equality ignores the wording
    assert ParsedInstruction.from_dict(json.loads(json.dumps(p.to_dict()))).prompt == p.prompt
    assert ParsedInstruction.add("edema").prompt == "Add the finding of edema."  # built, not written


@pytest.mark.parametrize("level", MIMIC_DIFF_VQA_LEVELS)
def test_mimic_diff_vqa_level_words(level: str) -> None:
    assert level in LEVEL_WORDS
    p = parse_instruction(f"Add the finding of {level} left pleural effusion.")
    assert p.findings[0].severity == level and p.findings[0].location == ("left",)
    c = parse_instruction(f"Change the level of pleural effusion from {level} to small.")
    assert (c.level_from, c.level_to) == (level, "small")
    c = parse_instruction(f"Change the level of pleural effusion from small to {level}.")
    assert (c.level_from, c.level_to) == ("small", level)
    assert parse_instruction(c.canonical()) == c


@pytest.mark.parametrize(
    ("levels", "expected"),
    [("moderate to large to small", ("moderate to large", "small")),
     ("small to moderate to large", ("small", "moderate to large")),
     ("mild to moderate to severe", None),  # two known readings: ambiguous
     ("moderate to severe to mild", ("moderate to severe", "mild"))],
)
def test_multi_word_levels_inside_from_a_to_b(levels: str, expected: tuple[str, str] | None) -> None:
    text = f"Change the level of edema from {levels}."
    if expected is None:
        with pytest.raises(InstructionError, match="ambiguous"):
            parse_instruction(text)
        return
    p = parse_instruction(text)
    assert (p.level_from, p.level_to) == expected
    assert parse_instruction(p.canonical()) == p


@pytest.mark.parametrize("word", MIMIC_DIFF_VQA_LOCATIONS)
def test_mimic_diff_vqa_location_words(word: str) -> None:
    p = parse_instruction(f"Add the finding of {word} atelectasis.")
    assert p.finding_names == ("atelectasis",)
    assert parse_instruction(p.canonical()) == p


def test_location_ranges_and_new_places() -> None:
    assert parse_instruction("Add the finding of atelectasis in the mid to lower lung.").findings[0].location == (
        "middle", "lower")
    assert parse_instruction("Add the finding of apicolateral pneumothorax.").findings[0].location == (
        "apical", "lateral")
    assert parse_instruction("Add the finding of right rib fracture.").findings[0].location == ("right", "rib")
    assert parse_instruction("Add the finding of left-sided pleural effusion.").findings[0].location == ("left",)


def test_add_single_finding() -> None:
    p = parse_instruction("Add the finding of pleural effusion.")
    assert p.operation == "add"
    assert p.findings == (FindingSpec("pleural effusion"),)
    assert p.canonical() == "Add the finding of pleural effusion."


def test_list_of_findings_with_synonyms_and_oxford_comma() -> None:
    p = parse_instruction("add the findings of Effusion,  pulmonary edema, and CARDIOMEGALY")
    assert p.finding_names == ("pleural effusion", "edema", "cardiomegaly")
    assert p.canonical() == "Add the findings of pleural effusion, edema and cardiomegaly."


def test_remove_and_change() -> None:
    assert parse_instruction("Remove the finding of pneumothorax.").operation == "remove"
    p = parse_instruction("Change the level of edema from mild to moderate.")
    assert (p.operation, p.finding_names, p.level_from, p.level_to) == ("change", ("edema",), "mild", "moderate")


@pytest.mark.parametrize(
    ("text", "location", "severity"),
    [
        ("Add the finding of small right pleural effusion.", ("right",), "small"),
        ("Add the finding of moderate pleural effusion in the left lower lung.", ("left", "lower"), "moderate"),
        ("Add the finding of bilateral pleural effusion.", ("bilateral",), None),
        ("Add the finding of bibasilar atelectasis.", ("bilateral", "base"), None),
        ("Add the finding of mild to moderate pleural effusion at the left base.", ("left", "base"),
         "mild to moderate"),
        ("Add the finding of retrocardiac atelectasis", ("retrocardiac",), None),
    ],
)
def test_v2_location_and_severity(text: str, location: tuple[str, ...], severity: str | None) -> None:
    p = parse_instruction(text)
    assert p.findings[0].location == location
    assert p.findings[0].severity == severity
    assert parse_instruction(p.canonical()) == p


def test_cardiomegaly_and_enlarged_cardiac_silhouette_stay_separate() -> None:
    p = parse_instruction("Remove the findings of enlargement of the cardiac silhouette and cardiomegaly.")
    assert p.finding_names == ("enlargement of the cardiac silhouette", "cardiomegaly")
    # the research spelling is canonical; the short form is a synonym of it, never the other way
    assert parse_instruction("Add the finding of enlarged cardiac silhouette.").finding_names == (
        "enlargement of the cardiac silhouette",)


def test_plural_maps_but_misspelling_errors_with_suggestion() -> None:
    assert parse_instruction("Add the finding of pneumothoraxes").finding_names == ("pneumothorax",)
    assert parse_instruction("Add the finding of bilateral pleural effusions").finding_names == (
        "pleural effusion",)
    with pytest.raises(InstructionError) as err:
        parse_instruction("Add the finding of cardiomegalyx.")
    assert err.value.suggestion == "cardiomegaly"


def test_no_substring_matching() -> None:
    # "effusion" inside another word must not fire; the research code's substring trap.
    with pytest.raises(InstructionError):
        parse_instruction("Add the finding of effusionitis.")
    with pytest.raises(InstructionError):
        parse_instruction("Add the finding of pneumothoraxitis.")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Make it worse.",
        "Add the finding of.",
        "Add the findings of pleural effusion, , edema.",
        "Add the finding of pleural effusion edema.",  # two findings without a separator
        "Add the finding of left pleural effusion foo.",
        "Add the finding of small large pleural effusion.",
        "Change the level of edema from mild to moderate to severe.",  # ambiguous compound
        "Change the level of edema from mild to huge.",
        "Add the finding of bilateral left pleural effusion.",
    ],
)
def test_malformed_raises(text: str) -> None:
    with pytest.raises(InstructionError):
        parse_instruction(text)


def test_grammar_suggestion_for_near_miss() -> None:
    with pytest.raises(InstructionError) as err:
        parse_instruction("add pleural effusion")
    assert err.value.suggestion == "Add the finding of pleural effusion."


def test_compound_levels_unambiguous_with_hyphens() -> None:
    p = parse_instruction("Change the level of edema from mild-to-moderate to severe.")
    assert (p.level_from, p.level_to) == ("mild to moderate", "severe")
    assert parse_instruction(p.canonical()) == p
    assert p.canonical() == "Change the level of edema from mild-to-moderate to severe."  # spaced is ambiguous


def test_constructors_and_dict_round_trip() -> None:
    p = ParsedInstruction.add(["effusion", "Cardiomegaly"], location=["Left"], severity="Small")
    assert p.finding_names == ("pleural effusion", "cardiomegaly")
    assert p.locations == {"left"}
    assert ParsedInstruction.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    c = ParsedInstruction.change("edema", "mild", "severe")
    assert c.canonical() == "Change the level of edema from mild to severe."
    assert ParsedInstruction.remove("pneumothorax").canonical() == "Remove the finding of pneumothorax."


def test_vocabulary_entries_are_consistent() -> None:
    for name, info in FINDINGS.items():
        assert name == info.name == name.lower()
        assert info.snomed_code.isdigit()
        assert set(info.regions) <= set(REGION_NAMES)
        assert lookup_finding(name) is info
    assert lookup_finding("Pleural Effusion").snomed_code == "60046008"


# --- property tests: canonical() parses back to the same object --------------------------------------

_levels = st.one_of(
    st.sampled_from(SEVERITY_WORDS),
    st.tuples(st.sampled_from(SEVERITY_WORDS), st.sampled_from(SEVERITY_WORDS)).map(lambda t: f"{t[0]}-to-{t[1]}"),
)
_sides = st.sampled_from([(), ("left",), ("right",), ("bilateral",)])
_zones = st.lists(st.sampled_from(LOCATION_WORDS[3:]), max_size=3, unique=True)
_location = st.tuples(_sides, _zones).map(lambda t: (*t[0], *t[1]))
_spec = st.builds(FindingSpec, st.sampled_from(sorted(FINDINGS)), _location, st.one_of(st.none(), _levels))
_add_remove = st.builds(
    ParsedInstruction, st.sampled_from(["add", "remove"]), st.lists(_spec, min_size=1, max_size=4).map(tuple)
)
_change = st.builds(
    lambda name, loc, a, b: ParsedInstruction.change(name, a, b, location=loc),
    st.sampled_from(sorted(FINDINGS)), _location, _levels, _levels,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_add_remove, _change))
def test_canonical_round_trip(p: ParsedInstruction) -> None:
    text = p.canonical()
    assert parse_instruction(text) == p
    assert parse_instruction(text).canonical() == text
    assert ParsedInstruction.from_dict(p.to_dict()) == p


@settings(max_examples=100, deadline=None)
@given(st.one_of(_add_remove, _change), st.data())
def test_case_and_whitespace_do_not_matter(p: ParsedInstruction, data: st.DataObject) -> None:
    words = p.canonical().rstrip(".").split(" ")
    gaps = data.draw(st.lists(st.sampled_from([" ", "  ", "\t", " \n "]), min_size=len(words) - 1,
                              max_size=len(words) - 1))
    messy = words[0] + "".join(g + w for g, w in zip(gaps, words[1:], strict=True))
    messy = data.draw(st.sampled_from([messy.upper(), messy.lower(), messy.title()]))
    messy += data.draw(st.sampled_from(["", ".", " . ", "..."]))
    assert parse_instruction(messy) == p
