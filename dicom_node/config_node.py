"""The `[node]` section: the DICOM SCP (C-STORE / C-ECHO), its admission limits, bounds and TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from dicom_node.config_base import _Section, check_ae_title


class TLSConfig(_Section):
    enabled: bool = Field(False, description="DICOM TLS on the SCP port")
    cert_file: Path | None = Field(None, description="the node's certificate (PEM)")
    key_file: Path | None = Field(None, description="the node's private key (PEM)")
    ca_file: Path | None = Field(None, description="CA bundle that client certificates must chain to")
    require_client_cert: bool = Field(False, description="reject associations without a valid client certificate")


class NodeConfig(_Section):
    """The DICOM SCP (C-STORE / C-ECHO)."""

    ae_title: str = Field("X2X", description="the SCP's AE title (called-AE rules add more)")
    host: str = Field("0.0.0.0", description="address the SCP listens on")
    port: int = Field(11112, ge=1, le=65535, description="DICOM port")
    # pynetdicom's default of 10 rejects the 11th concurrent sender: keep headroom.
    max_associations: int = Field(
        64, ge=1, description="concurrent associations accepted, in total across all receiver processes"
    )
    acse_timeout: float = Field(
        30.0, gt=0, description="seconds from connect to an accepted association: a deadline for the whole "
        "negotiation (a sender trickling its request is dropped), not a silence timer",
    )
    max_pending_associations: int = Field(
        32, ge=1, description="connections still negotiating at once; one more drops the oldest of them, so "
        "slow or silent connections cannot lock real senders out",
    )
    listen_backlog: int = Field(256, ge=1, description="connections the kernel queues before the SCP accepts them")
    max_instance_mb: int = Field(
        2048, ge=1, description="largest instance accepted (MB); larger ones are answered 0xA700 (C-STORE) "
        "or FailureReason 0xA700 (STOW-RS) and never stored",
    )
    max_sequence_depth: int = Field(
        32, ge=1, le=256, description="deepest sequence nesting accepted in a received data set; deeper ones "
        "are refused (C-STORE 0xC212, STOW-RS FailureReason 0xC000)",
    )
    max_elements: int = Field(
        200_000, ge=100, description="most data elements accepted in a received data set (nested ones included)"
    )
    spool_min_free_mb: int = Field(
        256, ge=0, description="free space the spool keeps: below it instances are refused (0xA700) and "
        "/readyz reports not ready",
    )
    dimse_timeout: float = Field(60.0, description="seconds to wait for a DIMSE message")
    network_timeout: float = Field(60.0, description="seconds of network silence before aborting")
    maximum_pdu_size: int = Field(
        1024 * 1024, ge=0, description="largest PDU we accept (bytes); 0 = unlimited, which lets a sender put "
        "a whole instance into one PDU, held in memory while it arrives",
    )
    allowed_calling_aes: list[str] = Field(default_factory=list, description="empty = accept any AE")
    study_quiet_seconds: float = Field(
        5.0, ge=0, description="a study is complete this long after its last instance (associations released)"
    )
    spool_fsync: bool = Field(
        True,
        description="fsync every instance (file + folder) before answering Success. false is UNSAFE "
        "(a crash loses acknowledged instances): only for measuring software overhead in benchmarks",
    )
    receiver_processes: int = Field(
        0, ge=0, description="SCP processes sharing the port (SO_REUSEPORT); 1 = in-process, 0 = auto"
    )
    scp_tuning: bool = Field(
        True,
        description="prompt reactor loops instead of pynetdicom's 1 ms polling (~4x the C-STORE rate); "
        "false = stock pynetdicom",
    )
    unknown_called_ae: Literal["reject", "default"] = Field("reject", description="called AE title neither "
        "ae_title nor a rule's: reject = A-ASSOCIATE-RJ (logged); default = as if sent to ae_title (warned)")
    tls: TLSConfig = Field(default_factory=TLSConfig)

    _ae_title = field_validator("ae_title")(check_ae_title)
