"""Coded concepts for what the node writes: finding -> SNOMED CT (from editor.vocabulary.FINDINGS),
segment category, quantity and unit of the guidance map."""

from __future__ import annotations

import logging

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from editor import FINDINGS

log = logging.getLogger("x2x.results")

# Segmented Property Category (CID 7150): every X2X segment is a (simulated) finding.
FINDING_CATEGORY = CodedConcept("404684003", "SCT", "Clinical finding")
# Used when a finding has no entry in the vocabulary (should not happen: the vocabulary is closed).
GENERIC_FINDING = CodedConcept("404684003", "SCT", "Clinical finding")
# The guidance map G = prior x relevance is a class-activation-like map (DCM 130402).
GUIDANCE_QUANTITY = CodedConcept(codes.DCM.ClassActivation.value, "DCM", codes.DCM.ClassActivation.meaning)
UNITLESS = CodedConcept("1", "UCUM", "no units")


def finding_code(name: str) -> CodedConcept:
    """SNOMED CT concept for a canonical finding name, from editor.vocabulary.FINDINGS."""
    info = FINDINGS.get(name.strip().lower())
    if info is None or not info.snomed_code:
        log.warning("finding %r has no SNOMED CT code in the vocabulary; using 'Clinical finding'", name)
        return GENERIC_FINDING
    return CodedConcept(str(info.snomed_code), "SCT", str(info.snomed_meaning or name))
