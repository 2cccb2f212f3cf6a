"""What every object the node writes carries: Synthetic Data, Contributing Equipment, Derivation
Description, Source Image Sequence, and the patient / study attributes of the source."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from editor import EditResult

PROJECT_NAME = "InstructX2X DICOM node project"
ALGORITHM_NAME = "InstructX2X"
ST_MAX_CHARS = 1024  # Derivation Description is ST
LO_MAX_CHARS = 64

# Patient, General Study and Patient Study module attributes copied from the source so that the
# objects land in the same study with the same demographics (the PACS files them together).
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "TimezoneOffsetFromUTC",
)


@lru_cache(maxsize=1)
def software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("instructx2x-node")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0+unknown"


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def software_versions(result: EditResult) -> list[str]:
    return [f"x2x-node {software_version()}", truncate(f"model {result.model_hash[:16]}", LO_MAX_CHARS)]


def derived_object_identity(
    result: EditResult, *, series_uid: str, sop_uid: str, series_number: int
) -> dict[str, Any]:
    """The identity arguments every highdicom derived object (SEG, Parametric Map) gets from a job."""
    return {
        "series_instance_uid": series_uid,
        "series_number": series_number,
        "sop_instance_uid": sop_uid,
        "instance_number": 1,
        "manufacturer": PROJECT_NAME,
        "manufacturer_model_name": truncate(result.model_id or "unknown model", 64),
        "software_versions": software_versions(result),
        "device_serial_number": "none",
    }


def contributing_equipment(result: EditResult, institution_name: str | None = None) -> hd.ContributingEquipment:
    """(109100, DCM, "Synthesizing Equipment"): this project, the model id and both versions."""
    return hd.ContributingEquipment(
        manufacturer=PROJECT_NAME,
        purpose_of_reference=codes.DCM.SynthesizingEquipment,
        manufacturer_model_name=truncate(result.model_id or "unknown model", LO_MAX_CHARS),
        software_versions=software_versions(result),
        institution_name=institution_name,
        contribution_description=truncate(
            f"SYNTHETIC counterfactual edit by {ALGORITHM_NAME}: {result.instruction.canonical()}", 1024
        ),
    )


def algorithm_identification(result: EditResult) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=truncate(f"{software_version()} model {result.model_hash[:16]}", LO_MAX_CHARS),
        source=PROJECT_NAME,
    )


def derivation_description(result: EditResult, extra: str = "") -> str:
    """A compact, complete-enough summary within ST's 1024 characters.

    Order of importance: synthetic flag, instruction, seed, model, the parameters that change the
    image. The instruction is shortened first if the whole does not fit (the full text is in the
    job record and result.json).
    """
    p = result.params
    params: dict[str, Any] = {
        "steps": p.steps,
        "sT": p.text_guidance,
        "sI": p.image_guidance,
        "tau": p.tau,
        "rse": p.rse,
        "t_rel": p.relevance_timestep,
        "K": p.relevance_samples,
        "start": p.start,
        "blend": p.blend_timestep,
        "prior": result.prior_source,
        "feather": p.feather_px,
        "res": p.resolution,
    }
    head = "SYNTHETIC (InstructX2X counterfactual, not acquired). "
    tail = (
        f" seed={result.seed}; model={result.model_id} sha256:{result.model_hash[:16]};"
        f" params={json.dumps(params, separators=(',', ':'))}; coverage={result.coverage:.4f}"
        + (f"; {extra}" if extra else "")
    )
    instruction = f"instruction=\"{result.prompt}\";"
    room = ST_MAX_CHARS - len(head) - len(tail)
    if room < 20:  # pathological model ids: shorten the tail instead
        tail = truncate(tail, ST_MAX_CHARS - len(head) - 20)
        room = 20
    return head + truncate(instruction, room) + tail


def source_image_item(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    code = codes.DCM.SourceImageForImageProcessingOperation
    purpose.CodeValue = code.value
    purpose.CodingSchemeDesignator = code.scheme_designator
    purpose.CodeMeaning = code.meaning
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    return item


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy patient and study attributes the target lacks or has empty."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source and (keyword not in target or target[keyword].is_empty):
            target[keyword] = source[keyword]


def mark_synthetic(
    ds: Dataset,
    source: Dataset,
    result: EditResult,
    *,
    series_description: str,
    general_image: bool = True,
    extra: str = "",
) -> None:
    """Synthetic Data, Series Description and (for IODs with the General Image module) the
    Derivation Description + Source Image Sequence; patient / study attributes from the source."""
    copy_patient_study(source, ds)
    ds.SyntheticData = "YES"
    # General Series: Laterality is conditional on a paired body part; naming the (unpaired) chest
    # satisfies it without guessing a side. The node only edits chest radiographs (eligibility).
    ds.BodyPartExamined = str(source.get("BodyPartExamined") or "CHEST")
    ds.SeriesDescription = truncate(series_description, LO_MAX_CHARS)
    if general_image:
        ds.DerivationDescription = derivation_description(result, extra)
        ds.SourceImageSequence = DicomSequence([source_image_item(source)])
