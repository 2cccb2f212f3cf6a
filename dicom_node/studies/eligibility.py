"""Which received instances the editor may touch: frontal chest radiographs only.

Eligible: Modality CR or DX (or a CR/DX image SOP class when Modality is absent), Body Part Examined a
chest word of CHEST_BODY_PARTS (or absent), View Position PA or AP (or absent), a single-channel image
with pixel data. Everything else gets a short reason that is recorded and shown to the operator.

Body Part Examined is a defined term only in theory: modalities write CHEST, THORAX, LUNG, TORSO, lower
case, "CHEST PA", or their own language. The table below is matched after upper-casing, removing accents
and turning `_`/`-`/runs of spaces into one space; docs/dicom.md lists it.
"""

from __future__ import annotations

import re
import unicodedata

from pydicom.dataset import Dataset

# SOP classes of projection radiographs (CR, DX for presentation / processing).
CR_DX_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
}
FRONTAL_VIEWS = {"PA", "AP"}

# Body Part Examined values that mean "chest", in normalised form (see body_part_key).
CHEST_BODY_PARTS: dict[str, str] = {
    # DICOM defined term, and what modalities write instead
    "CHEST": "DICOM defined term (PS3.16 CID 4031)",
    "THORAX": "English / German / French / Dutch / Scandinavian",
    "LUNG": "English", "LUNGS": "English",
    "TORSO": "English (upper body; modality default on some DR systems)",
    "CXR": "abbreviation",
    "CHEST PA": "with the view", "CHEST AP": "with the view", "THORAX PA": "with the view",
    "THORAX AP": "with the view", "PORT CHEST": "portable chest", "PORTABLE CHEST": "portable chest",
    "CHEST PORTABLE": "portable chest", "BRUST": "German", "BRUSTKORB": "German", "LUNGE": "German",
    "LUNGEN": "German", "POUMON": "French", "POUMONS": "French", "POITRINE": "French",
    "TORAX": "Spanish / Portuguese (TÓRAX)", "PECHO": "Spanish", "PULMON": "Spanish (PULMÓN)",
    "PULMONES": "Spanish", "TORACE": "Italian", "POLMONE": "Italian", "POLMONI": "Italian",
    "BORST": "Dutch", "BORSTKAS": "Dutch", "LONGEN": "Dutch", "BROSTKORG": "Swedish (BRÖSTKORG)",
    "LUNGOR": "Swedish", "LUNGER": "Danish / Norwegian", "KLATKA PIERSIOWA": "Polish", "HRUDNIK": "Czech",
    "胸部": "Japanese / Chinese", "흉부": "Korean",
}


def body_part_key(value: str) -> str:
    """Upper case, accents removed, `_`, `-` and runs of spaces as one space: 'Tórax' -> 'TORAX'."""
    decomposed = unicodedata.normalize("NFKD", value)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[\s_\-]+", " ", bare).strip().upper()


def is_chest(body_part: str) -> bool:
    """True when a Body Part Examined value (as sent) names the chest; an empty value counts too."""
    return not body_part.strip() or body_part_key(body_part) in CHEST_BODY_PARTS


class Unreadable(ValueError):
    """An attribute the decision needs cannot be decoded (unknown VR, a value of the wrong type)."""


def _get(ds: Dataset, keyword: str) -> object:
    try:
        return ds.get(keyword)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a malformed element
        raise Unreadable(f"{keyword} cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from exc


def _text(ds: Dataset, keyword: str) -> str:
    value = _get(ds, keyword)
    return str(value).strip().upper() if value not in (None, "") else ""


def _count(ds: Dataset, keyword: str) -> int:
    value = _get(ds, keyword)
    if value in (None, ""):
        return 1
    try:
        return int(str(value).strip())
    except ValueError as exc:
        raise Unreadable(f"{keyword} {str(value)[:40]!r} is not a number") from exc


def skip_reason(ds: Dataset, *, has_pixel_data: bool = True) -> str | None:
    """None when the instance is a frontal chest radiograph, else why it is skipped (an attribute that
    cannot be read is a reason too, naming it)."""
    try:
        return _skip_reason(ds, has_pixel_data)
    except Unreadable as exc:
        return f"unreadable attribute: {exc}"


def _skip_reason(ds: Dataset, has_pixel_data: bool) -> str | None:
    modality = _text(ds, "Modality")
    sop_class = str(_get(ds, "SOPClassUID") or "").strip()
    if modality:
        if modality not in ("CR", "DX"):
            return f"modality {modality} is not CR/DX"
    elif sop_class not in CR_DX_SOP_CLASSES:
        return f"no Modality and SOP class {sop_class or '(none)'} is not CR/DX"
    body_part = str(ds.get("BodyPartExamined", "") or "")
    if not is_chest(body_part):
        return f"body part {body_part.strip()} is not the chest (accepted: CHEST, THORAX, LUNG, ...; docs/dicom.md)"
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        return f"view position {view} is not frontal (PA/AP)"
    if not has_pixel_data:
        return "no pixel data"
    samples = _count(ds, "SamplesPerPixel")
    if samples != 1:
        return f"{samples} samples per pixel (colour); only greyscale radiographs are edited"
    frames = _count(ds, "NumberOfFrames")
    if frames > 1:
        return f"{frames} frames; only single-frame radiographs are edited"
    return None
