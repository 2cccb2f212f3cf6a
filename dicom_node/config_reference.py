"""Render the configuration reference from the Settings model itself, so docs cannot drift."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dicom_node.config import Settings


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")


def _default(field: FieldInfo) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, PurePath):
        return repr(str(value))
    return repr(value)


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, key + "."))
            continue
        rows.append((key, _type_name(annotation), _default(field), field.description or ""))
    return rows


def render_markdown() -> str:
    lines = [
        "| key | type | default | notes |",
        "| --- | --- | --- | --- |",
    ]
    for key, type_name, default, notes in _rows(Settings, ""):
        env = "X2X_" + key.upper().replace(".", "__")
        cells = [f"`{key}` (`{env}`)", f"`{type_name}`", f"`{default}`", notes]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
