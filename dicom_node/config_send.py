"""The `[destinations]` tables (one typed table per destination type) and the `[send]` section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, SecretStr, Tag, field_validator

from dicom_node.config_base import _Section, check_ae_title


# Destinations: one typed table per type, so a missing or misspelt key fails when the config is loaded
# (`x2x config check`, `x2x serve`), not hours later when the first job is sent.
class CStoreDestination(_Section):
    """`type = "cstore"`: a DICOM C-STORE SCP, e.g. the PACS."""

    config_label: ClassVar[str] = "a cstore destination"
    type: Literal["cstore"] = Field("cstore", description="cstore (the default when type is omitted)")
    ae_title: str = Field(..., description="the receiver's AE title, e.g. ORTHANC")
    host: str = Field(..., min_length=1, description="its host name or address")
    port: int = Field(..., ge=1, le=65535, description="its DICOM port")

    _ae_title = field_validator("ae_title")(check_ae_title)


class StowDestination(_Section):
    """`type = "stow"`: a DICOMweb STOW-RS service."""

    config_label: ClassVar[str] = "a stow destination"
    type: Literal["stow"] = Field(..., description="stow")
    url: str = Field(..., description="DICOMweb root, e.g. http://pacs:8042/dicom-web (/studies is appended)")
    username: str | None = Field(None, description="HTTP basic auth user")
    password: SecretStr | None = Field(None, description="HTTP basic auth password")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or len(v) <= len("https://"):
            raise ValueError("url must start with http:// or https://, e.g. http://pacs:8042/dicom-web")
        return v


class FolderDestination(_Section):
    """`type = "folder"`: files written as <study>/<series>/<sop>.dcm under a folder."""

    config_label: ClassVar[str] = "a folder destination"
    type: Literal["folder"] = Field(..., description="folder")
    path: Path = Field(..., description="folder the objects are written to (created when missing)")


def _destination_type(value: Any) -> str:
    """The union's tag; `type` may be omitted and then means cstore (as before the union)."""
    found = value.get("type", "cstore") if isinstance(value, dict) else getattr(value, "type", "cstore")
    return str(found)


Destination = Annotated[
    Union[
        Annotated[CStoreDestination, Tag("cstore")],
        Annotated[StowDestination, Tag("stow")],
        Annotated[FolderDestination, Tag("folder")],
    ],
    Discriminator(_destination_type, custom_error_type="destination_type",
                  custom_error_message="type must be 'cstore', 'stow' or 'folder'"),
]


class SendConfig(_Section):
    default_destination: str | None = Field(None, description="name in [destinations] when no rule or peer applies")
    max_attempts: int = Field(5, ge=1, description="send attempts before a job is dead-lettered")
    backoff_seconds: float = Field(2.0, ge=0, description="first retry delay; doubles each attempt")
    backoff_max_seconds: float = Field(300.0, ge=0, description="longest retry delay")
    peers: dict[str, str] = Field(
        default_factory=dict,
        description="calling AE title -> name in [destinations]: results go back to the sender's peer",
    )
