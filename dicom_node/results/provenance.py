"""What every object the node writes carries: Synthetic Data, Contributing Equipment, Derivation
Description, Source Image Sequence, the patient / study attributes of the source, the time of the edit
(Series / Content / Instance Creation Date and Time) and the source's lossy-compression history."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

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


# Transfer syntaxes that are lossy whatever their parameters, with the Lossy Image Compression Method
# (0028,2114) defined term of each (PS3.3 C.7.6.1.1.5.1). JPEG-LS near-lossless and JPEG 2000 may be
# lossless in fact: for those the source's own Lossy Image Compression attribute is trusted.
LOSSY_TRANSFER_SYNTAXES = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1"}
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


def source_timezone(source: Dataset) -> timezone | None:
    """The source's Timezone Offset From UTC (copied onto every object), if valid: the edit time is then
    written in that zone, as the attribute says every date and time of the instance is."""
    match = _OFFSET.match(str(source.get("TimezoneOffsetFromUTC", "")).strip())
    if match is None:
        return None
    sign = -1 if match.group(1) == "-" else 1
    hours, minutes = int(match.group(2)), int(match.group(3))
    if hours > 14 or minutes > 59:
        return None
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def stamp_edit_time(ds: Dataset, source: Dataset, edit_time: datetime) -> None:
    """Series, Content and Instance Creation Date/Time (and our equipment's Contribution DateTime) = the
    time of the edit, in the source's time zone where it names a valid one (else the node's local time,
    and no Timezone Offset From UTC)."""
    zone = source_timezone(source)
    if zone is None and "TimezoneOffsetFromUTC" in ds:
        del ds.TimezoneOffsetFromUTC  # an unreadable offset copied from the source would misdate every time
    when = edit_time.astimezone(zone) if zone is not None else edit_time.astimezone()
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    for prefix in ("Series", "Content", "InstanceCreation"):
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time)
    for item in ds.get("ContributingEquipmentSequence", []):
        purpose = item.get("PurposeOfReferenceCodeSequence")
        # 109100 synthesizing (this node), 109102 processing (highdicom, while encoding): both now
        if purpose and purpose[0].get("CodeValue") in ("109100", "109102"):
            item.ContributionDateTime = date + time


def lossy_compression(source: Dataset) -> tuple[str, list[str], list[str]]:
    """(Lossy Image Compression, ratios, methods) of the source's pixels: its own attributes where it says
    01, else 01 inferred from a lossy transfer syntax (ratio from the encapsulated size), else 00."""
    if str(source.get("LossyImageCompression", "")).strip() == "01":
        ratios = _values(source.get("LossyImageCompressionRatio"))
        return "01", ratios, _values(source.get("LossyImageCompressionMethod"))
    syntax = getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", None)
    method = LOSSY_TRANSFER_SYNTAXES.get(syntax) if syntax is not None else None
    if method is None:
        return "00", [], []
    ratio = _compression_ratio(source)
    return "01", [ratio] if ratio else [], [method]


def carry_lossy_compression(ds: Dataset, source: Dataset) -> None:
    """Once lossy, always lossy (PS3.3 C.7.6.1.1.5): every object derived from lossy pixels says so."""
    flag, ratios, methods = lossy_compression(source)
    ds.LossyImageCompression = flag
    for keyword, values in (("LossyImageCompressionRatio", ratios), ("LossyImageCompressionMethod", methods)):
        if flag == "01" and values:
            setattr(ds, keyword, values if len(values) > 1 else values[0])
        elif keyword in ds:
            del ds[keyword]


def _values(value: Any) -> list[str]:
    """The values of a (possibly multi-valued, possibly absent) attribute, as strings."""
    if value is None:
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v) for v in items if str(v).strip()]


def _compression_ratio(source: Dataset) -> str | None:
    """Uncompressed size / encapsulated size, as a DS (at most 16 characters)."""
    try:
        frames = int(source.get("NumberOfFrames") or 1)
        uncompressed = (int(source.Rows) * int(source.Columns) * int(source.get("SamplesPerPixel", 1))
                        * (int(source.BitsAllocated) // 8) * frames)
        compressed = len(source.PixelData)
    except (AttributeError, TypeError, ValueError):
        return None
    return f"{uncompressed / compressed:.2f}"[:16] if compressed > 0 and uncompressed > 0 else None
