"""Which edit a received instance asks for (ARCHITECTURE.md §6), first match wins:

1. a called-AE rule in the config (`[[rules]] called_ae = "X2X_EFFUSION"`, instruction + seed/steps);
2. the private block `INSTRUCTX2X` in group 0x0071 of the instance (layout below);
3. the standard attribute named by `requests.standard_attribute` (e.g. RequestedProcedureDescription);
4. `requests.default_instruction`, for studies sent to the node's own AE title (or, with
   `node.unknown_called_ae = "default"`, to an AE title the node does not know).

Private block (creator "INSTRUCTX2X" in (0071,00xx); `xx` = whichever block the sender reserved, so
with block 0x10 the elements are (0071,1010) ...):

    (0071,xx10) LT  instruction   "Add the finding of pleural effusion."
    (0071,xx11) IS  seed          integer, overrides the rule / default seed
    (0071,xx12) LO  location      location word(s), multi-valued, e.g. "left\\lower" (applies to every finding)
    (0071,xx13) LO  severity      e.g. "moderate" (applies to every finding; not for "change")

An instruction the parser rejects gives an `EditRequest` with `error` set (the parser's message, with
its suggestion); the caller records it on the study and edits nothing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicom_node.config import Settings
from dicom_node.edit_params import InvalidEditParams, resolve_params
from editor import EditParams, FindingSpec, InstructionError, parse_instruction

ELEMENT_INSTRUCTION = 0x10
ELEMENT_SEED = 0x11
ELEMENT_LOCATION = 0x12
ELEMENT_SEVERITY = 0x13


@dataclass(frozen=True)
class EditRequest:
    source: str  # rule | private | attribute | default | api
    text: str  # the instruction as given
    instruction: str | None = None  # what the editor gets (editor prompt, see edit_prompt); None when invalid
    seed: int = 0
    params: EditParams = EditParams()
    destination: str | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None and self.instruction is not None


def write_private_block(
    ds: Dataset,
    instruction: str,
    *,
    seed: int | None = None,
    location: str | list[str] | None = None,
    severity: str | None = None,
    settings: Settings | None = None,
) -> None:
    """Put an edit request into `ds` (used by senders, the tests and `x2x` tooling)."""
    creator = settings.requests.private_creator if settings else "INSTRUCTX2X"
    group = settings.requests.private_group if settings else 0x0071
    block = ds.private_block(group, creator, create=True)
    block.add_new(ELEMENT_INSTRUCTION, "LT", instruction)
    if seed is not None:
        block.add_new(ELEMENT_SEED, "IS", str(int(seed)))
    if location:
        block.add_new(ELEMENT_LOCATION, "LO", location if isinstance(location, list) else [location])
    if severity:
        block.add_new(ELEMENT_SEVERITY, "LO", severity)


def _private_request(settings: Settings, ds: Dataset) -> dict[str, Any] | None:
    try:
        block = ds.private_block(settings.requests.private_group, settings.requests.private_creator)
    except KeyError:
        return None

    def value(element: int) -> Any:
        if element not in block:
            return None
        v = block[element].value
        return v if v not in (None, "", b"") else None

    raw_text = value(ELEMENT_INSTRUCTION)
    if raw_text is None:
        return None
    text = raw_text.decode("utf-8", "replace") if isinstance(raw_text, bytes) else str(raw_text)
    out: dict[str, Any] = {"text": text.strip()}
    seed = value(ELEMENT_SEED)
    if seed is not None:
        out["seed"] = _as_int(seed, "seed")
    loc = value(ELEMENT_LOCATION)
    if loc is not None:
        words = list(loc) if not isinstance(loc, (str, bytes)) else [loc]
        out["location"] = [w for item in words for w in re.split(r"[\s,\\]+", _text(item)) if w]
    sev = value(ELEMENT_SEVERITY)
    if sev is not None:
        out["severity"] = _text(sev).strip()
    return out


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _as_int(v: Any, what: str) -> int | str:
    try:
        return int(str(_text(v)).strip())
    except ValueError:
        return f"invalid {what} {_text(v)!r}"


def edit_prompt(text: str, *, location: list[str] | None = None, severity: str | None = None) -> str:
    """The instruction the text encoder gets, checked by the editor's parser (raises
    editor.InstructionError): the text as written (whitespace normalised), the model having been trained
    on the dataset's own sentences. Location / severity given beside it (the private block) make a new
    sentence, so then it is the canonical sentence of the combined parse."""
    parsed = parse_instruction(text)
    if location or severity:
        findings = tuple(
            FindingSpec(
                f.name,
                tuple(location) if location else f.location,
                severity if severity else f.severity,
            )
            for f in parsed.findings
        )
        parsed = dataclasses.replace(parsed, findings=findings, text=None)
    return parsed.prompt


def resolve(settings: Settings, called_ae: str | None, ds: Dataset) -> EditRequest | None:
    """The edit request for one instance, or None when nothing asks for an edit."""
    seed = settings.edit.seed
    steps: int | None = None
    destination: str | None = None
    location: list[str] | None = None
    severity: str | None = None
    seed_error: str | None = None

    rule = settings.rule_for(called_ae) if called_ae else None
    private = _private_request(settings, ds)
    if rule is not None:
        source, text = "rule", rule.instruction
        seed = rule.seed if rule.seed is not None else seed
        steps, destination = rule.steps, rule.destination
    elif private is not None:
        source, text = "private", private["text"]
        location, severity = private.get("location"), private.get("severity")
        if isinstance(private.get("seed"), str):
            seed_error = private["seed"]
        elif "seed" in private:
            seed = private["seed"]
    elif settings.requests.standard_attribute and str(ds.get(settings.requests.standard_attribute, "")).strip():
        source, text = "attribute", str(ds.get(settings.requests.standard_attribute)).strip()
    elif settings.requests.default_instruction and _is_default_ae(settings, called_ae):
        source, text = "default", settings.requests.default_instruction
    else:
        return None

    longest = settings.requests.max_instruction_chars
    if len(text) > longest:  # never parsed, stored or logged whole
        return EditRequest(source, text[:longest], None, int(seed), EditParams(), destination,
                           error=f"instruction of {len(text)} characters; at most {longest} "
                                 "(requests.max_instruction_chars)")
    try:
        params = resolve_params(settings, {"steps": steps})
    except InvalidEditParams as exc:
        return EditRequest(source, text, None, int(seed), EditParams(), destination, error=str(exc))
    if seed_error is not None:
        return EditRequest(source, text, None, int(seed), params, destination, error=seed_error)
    try:
        prompt = edit_prompt(text, location=location, severity=severity)
    except InstructionError as exc:  # its message already carries the "did you mean"
        return EditRequest(source, text, None, int(seed), params, destination, error=str(exc))
    return EditRequest(source, text, prompt, int(seed), params, destination)


def _is_default_ae(settings: Settings, called_ae: str | None) -> bool:
    """Sent to the node's own AE title, or (node.unknown_called_ae = "default") to one it does not know."""
    if called_ae is None or called_ae.strip() == settings.node.ae_title.strip():
        return True
    return settings.node.unknown_called_ae == "default" and called_ae.strip() not in settings.known_called_aes()
