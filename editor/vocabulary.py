"""The closed finding vocabulary (MIMIC-Diff-VQA findings) and how each finding maps to anatomy.

Canonical names: the research code's 31 finding names, spelled exactly as it spells them
(`RESEARCH_FINDINGS`; e.g. "enlargement of the cardiac silhouette", "tortuosity of the descending
aorta"), plus this project's extras (nodule, mass, fibrosis, ...). Synonyms map onto a canonical name,
never the other way. Every finding has a region rule; the few without a typical place on a frontal
radiograph (hypoxemia, hematoma, air collection) use the `BROAD_FIELD`, and the prior records that.

Why closed: the research code matched findings by raw substring, so "effusion" fired inside unrelated
words and unknown findings silently became "no prior". Here every finding is a named entry, matched as
whole words, and anything else is an `InstructionError` with a "did you mean" suggestion.

SNOMED CT codes: only codes we are sure of are given as specific codes. Where we are not sure, the
entry uses the general concept 404684003 "Clinical finding" (marked `# general code` below) so that no
wrong specific code ever reaches a DICOM Segmentation.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# Region names (side-agnostic) understood by editor/regions.py.
REGION_NAMES: tuple[str, ...] = (
    "lung",  # whole lung field
    "upper_zone",
    "middle_zone",
    "lower_zone",
    "cp_angle",  # costophrenic angle
    "apex",
    "hilum",
    "perihilar",
    "lateral_margin",  # lateral pleural margin
    "heart",
    "heart_border",
    "mediastinum",
    "retrocardiac",
    "spine",  # midline column of the thorax (scoliosis)
    "chest_wall",  # ribs / lateral thorax (fractures)
    "subdiaphragm",  # band just below and above the hemidiaphragms (hernia, free air)
    "base_behind_heart",  # the lung base hidden behind this side's half of the heart (dependent fluid)
    "hemithorax",  # the lung field as the chest wall, mediastinum and diaphragm bound it (fluid included)
)

GENERAL_FINDING_CODE = ("404684003", "Clinical finding")

# The finding names of the research code (its VALID_CATEGORIES, the MIMIC-Diff-VQA findings), spelled
# exactly as it spells them: these are the canonical names, and synonyms map onto them.
RESEARCH_FINDINGS: tuple[str, ...] = (
    "fracture", "thymoma", "tortuosity of the descending aorta", "blunting of the costophrenic angle",
    "atelectasis", "hilar congestion", "hernia", "cardiomegaly", "consolidation", "pleural effusion",
    "tortuosity of the thoracic aorta", "vascular congestion", "pleural thickening", "granuloma",
    "lung opacity", "contusion", "hypertensive heart disease", "heart failure", "gastric distention",
    "pneumomediastinum", "calcification", "infection", "air collection", "pneumonia",
    "enlargement of the cardiac silhouette", "edema", "emphysema", "scoliosis", "hypoxemia", "hematoma",
    "pneumothorax",
)

# Where a finding has no typical place on a frontal radiograph (hypoxemia has no radiographic sign, air
# or blood can collect anywhere), its region rule is this broad field; the prior says so.
BROAD_FIELD: tuple[str, ...] = ("lung", "heart", "mediastinum")


class InstructionError(ValueError):
    """An instruction that cannot be parsed; `.suggestion` is a corrected form when one is likely."""

    def __init__(self, message: str, suggestion: str | None = None) -> None:
        text = message if suggestion is None else f"{message} (did you mean {suggestion!r}?)"
        super().__init__(text)
        self.suggestion = suggestion


@dataclass(frozen=True)
class FindingInfo:
    name: str  # canonical lower-case, e.g. "pleural effusion"
    synonyms: tuple[str, ...]
    snomed_code: str
    snomed_meaning: str
    paper_mask_name: str  # file stem used by the research release, e.g. "Effusion"
    regions: tuple[str, ...]  # names from REGION_NAMES (where the finding appears)
    # Where the finding *is* when an instruction removes it. The anatomy is segmented on the image that
    # shows the finding, so fluid or collapse hides part of the lung: "Remove" covers the hemithorax.
    remove_regions: tuple[str, ...] | None = None  # None = `regions` with "lung" widened to "hemithorax"
    broad: bool = False  # True: no specific place; `regions` is BROAD_FIELD (recorded in provenance)
    research: bool = False  # one of RESEARCH_FINDINGS (else one of this project's extras)

    def regions_for(self, operation: str) -> tuple[str, ...]:
        """The region rule for an operation ("add", "remove", "change")."""
        if operation != "remove":
            return self.regions
        if self.remove_regions is not None:
            return self.remove_regions
        return tuple(dict.fromkeys("hemithorax" if r == "lung" else r for r in self.regions))


def _f(
    name: str,
    synonyms: tuple[str, ...],
    code: tuple[str, str],
    paper: str,
    regions: tuple[str, ...],
    remove: tuple[str, ...] | None = None,
) -> FindingInfo:
    return FindingInfo(name, synonyms, code[0], code[1], paper, regions, remove,
                       broad=regions == BROAD_FIELD, research=name in RESEARCH_FINDINGS)


_G = GENERAL_FINDING_CODE
_LUNG_FIELDS = ("lung",)
_HEART = ("heart", "heart_border")

# Paper mask names: the research code loads pseudo_mask_<name.title()>.npy (its effusion entry is
# spelled "Effusion").
_ENTRIES: tuple[FindingInfo, ...] = (
    # --- the research code's 31 findings -------------------------------------------------------------
    _f("fracture", ("fractures", "bone fracture"), ("125605004", "Fracture of bone"), "Fracture",
       ("chest_wall",)),
    _f("thymoma", (), _G, "Thymoma", ("mediastinum",)),  # general code
    _f("tortuosity of the descending aorta", ("tortuous descending aorta", "descending aortic tortuosity"),
       _G, "Tortuosity Of The Descending Aorta", ("mediastinum",)),  # general code
    _f("blunting of the costophrenic angle", ("costophrenic angle blunting", "blunted costophrenic angle",
                                              "blunting of the costophrenic angles"),
       _G, "Blunting Of The Costophrenic Angle", ("cp_angle",)),  # general code
    _f("atelectasis", ("atelectases", "atelectatic change", "collapse"), ("46621007", "Atelectasis"),
       "Atelectasis", _LUNG_FIELDS),
    _f("hilar congestion", ("hilar engorgement",), _G, "Hilar Congestion", ("hilum", "perihilar")),
    _f("hernia", ("hiatal hernia", "hiatus hernia"), ("84089009", "Hiatal hernia"), "Hernia",
       ("retrocardiac", "subdiaphragm")),
    _f("cardiomegaly", ("enlarged heart", "heart enlargement", "cardiac enlargement"),
       ("8186001", "Cardiomegaly"), "Cardiomegaly", _HEART),
    _f("consolidation", ("lung consolidation", "airspace consolidation"),
       ("95436008", "Lung consolidation"), "Consolidation", _LUNG_FIELDS),
    # Fluid lies in the lower hemithorax, fills the angle and runs behind the heart; removing it restores
    # the lung field the diseased image hides, so "Remove" covers the whole hemithorax.
    _f("pleural effusion", ("effusion", "pleural fluid", "hydrothorax"), ("60046008", "Pleural effusion"),
       "Effusion", ("lower_zone", "cp_angle", "subdiaphragm", "base_behind_heart"),
       remove=("hemithorax", "cp_angle", "subdiaphragm", "base_behind_heart")),
    _f("tortuosity of the thoracic aorta", ("tortuous thoracic aorta", "tortuous aorta", "tortuosity of the aorta",
                                            "aortic tortuosity"),
       _G, "Tortuosity Of The Thoracic Aorta", ("mediastinum",)),  # general code
    _f("vascular congestion", ("pulmonary vascular congestion", "vascular engorgement"), _G,
       "Vascular Congestion", ("perihilar", "lung")),  # general code
    _f("pleural thickening", ("thickening of the pleura",), _G, "Pleural Thickening",
       ("lateral_margin", "apex", "cp_angle")),  # general code
    _f("granuloma", ("granulomas", "calcified granuloma"), ("45647009", "Granuloma"), "Granuloma",
       _LUNG_FIELDS),
    _f("lung opacity", ("opacity", "opacities", "opacification", "airspace opacity", "pulmonary opacity"),
       _G, "Lung Opacity", _LUNG_FIELDS),  # general code
    _f("contusion", ("pulmonary contusion", "lung contusion"), _G, "Contusion", _LUNG_FIELDS),  # general code
    # Its radiographic sign is an enlarged (left-ventricular) heart.
    _f("hypertensive heart disease", (), _G, "Hypertensive Heart Disease", _HEART),  # general code
    _f("heart failure", ("congestive heart failure", "chf"), ("84114007", "Heart failure"), "Heart Failure",
       ("heart", "perihilar", "lung")),
    # The stomach bubble under the left hemidiaphragm: the band around the diaphragm.
    _f("gastric distention", ("gastric distension", "distended stomach", "gastric dilatation"), _G,
       "Gastric Distention", ("subdiaphragm",)),  # general code
    _f("pneumomediastinum", (), _G, "Pneumomediastinum", ("mediastinum",)),  # general code
    _f("calcification", ("calcifications",), ("18115005", "Pathologic calcification"), "Calcification",
       ("lung", "mediastinum")),
    _f("infection", ("infectious process",), _G, "Infection", _LUNG_FIELDS),  # general code
    # Free air can be anywhere (under the diaphragm, pleural, mediastinal): the broad field.
    _f("air collection", ("free air",), _G, "Air Collection", BROAD_FIELD),  # general code
    _f("pneumonia", ("pneumonic infiltrate",), ("233604007", "Pneumonia"), "Pneumonia", _LUNG_FIELDS),
    # A separate finding in MIMIC-Diff-VQA (the radiograph sign, not the diagnosis): kept apart.
    _f("enlargement of the cardiac silhouette", ("enlarged cardiac silhouette", "cardiac silhouette enlargement"),
       _G, "Enlargement Of The Cardiac Silhouette", _HEART),  # general code
    _f("edema", ("pulmonary edema", "oedema", "pulmonary oedema", "interstitial edema"),
       ("19242006", "Pulmonary edema"), "Edema", ("lung", "perihilar")),
    _f("emphysema", ("pulmonary emphysema",), ("87433001", "Pulmonary emphysema"), "Emphysema",
       _LUNG_FIELDS),
    _f("scoliosis", (), ("298382003", "Scoliosis deformity of spine"), "Scoliosis", ("spine",)),
    # A blood-gas finding with no radiographic sign of its own: the broad field.
    _f("hypoxemia", ("hypoxaemia",), _G, "Hypoxemia", BROAD_FIELD),  # general code
    # Chest wall, mediastinal or pulmonary: the broad field.
    _f("hematoma", ("haematoma",), _G, "Hematoma", BROAD_FIELD),  # general code
    _f("pneumothorax", ("pneumothoraces",), ("36118008", "Pneumothorax"), "Pneumothorax",
       ("apex", "lateral_margin", "upper_zone")),
    # --- this project's extras -------------------------------------------------------------------------
    _f("lung lesion", ("lesion",), _G, "Lung Lesion", _LUNG_FIELDS),  # general code
    _f("fibrosis", ("pulmonary fibrosis", "fibrotic change"), ("51615001", "Pulmonary fibrosis"),
       "Fibrosis", _LUNG_FIELDS),
    _f("nodule", ("lung nodule", "pulmonary nodule", "nodular opacity"), _G, "Nodule",
       _LUNG_FIELDS),  # general code
    _f("mass", ("lung mass", "pulmonary mass"), _G, "Mass", ("lung", "hilum")),  # general code
    _f("subcutaneous emphysema", ("subcutaneous air",), _G, "Subcutaneous Emphysema",
       ("chest_wall",)),  # general code
    _f("hydropneumothorax", (), _G, "Hydropneumothorax", ("apex", "lateral_margin", "lower_zone", "cp_angle"),
       remove=("hemithorax", "cp_angle")),  # general code
)

FINDINGS: dict[str, FindingInfo] = {info.name: info for info in _ENTRIES}

for _info in _ENTRIES:  # a typo in the table above must fail at import, not at edit time
    assert _info.regions, _info
    assert set(_info.regions) | set(_info.regions_for("remove")) <= set(REGION_NAMES), _info
assert set(RESEARCH_FINDINGS) <= set(FINDINGS), set(RESEARCH_FINDINGS) - set(FINDINGS)


def normalise_words(text: str) -> str:
    """Lower case, hyphens/underscores as spaces, single spaces: the form all matching happens on."""
    text = re.sub(r"[_\-]+", " ", text.strip().lower())
    return re.sub(r"\s+", " ", text).strip()


def _plural_forms(phrase: str) -> set[str]:
    """Simple English plurals of the last word ('effusions', 'pneumothoraxes'); never anything fuzzier."""
    head, _, last = phrase.rpartition(" ")
    prefix = f"{head} " if head else ""
    forms = {phrase}
    if last.endswith(("s", "x", "sh", "ch")):
        forms.add(f"{prefix}{last}es")
    elif last.endswith("y") and len(last) > 2 and last[-2] not in "aeiou":
        forms.add(f"{prefix}{last[:-1]}ies")
    else:
        forms.add(f"{prefix}{last}s")
    return forms


def _build_phrase_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for info in _ENTRIES:
        for phrase in (info.name, *info.synonyms):
            for form in _plural_forms(normalise_words(phrase)):
                previous = index.setdefault(form, info.name)
                assert previous == info.name, f"phrase {form!r} maps to two findings"
    return index


# Every accepted surface phrase (name, synonym, simple plural) -> canonical finding name.
PHRASES: dict[str, str] = _build_phrase_index()


def suggest(text: str) -> str | None:
    """The closest known finding phrase to `text` (difflib), rendered as its canonical name."""
    close = difflib.get_close_matches(normalise_words(text), list(PHRASES), n=1, cutoff=0.6)
    return PHRASES[close[0]] if close else None


def lookup_finding(text: str) -> FindingInfo:
    """Exact (whole-phrase) lookup of a finding name or synonym; anything else is an InstructionError."""
    key = normalise_words(text).rstrip(".")
    name = PHRASES.get(key)
    if name is None:
        raise InstructionError(f"unknown finding {text!r}", suggest(key))
    return FINDINGS[name]
