"""inbound/responses.py writes the C-STORE-RSP command set byte for byte as pynetdicom encodes it, and
stands in for the pynetdicom send path it was checked against."""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode

from dicom_node.inbound.responses import SEND_MSG_SOURCE_SHA256, store_response_command

CT = "1.2.840.10008.5.1.4.1.1.2"
CR = "1.2.840.10008.5.1.4.1.1.1"


def _response(sop_class: str, sop_instance: str, message_id: int, status: int) -> C_STORE:
    rsp = C_STORE()  # as pynetdicom's StorageServiceClass.SCP builds it
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


def _pynetdicom_pdata(rsp: C_STORE, context_id: int = 1, max_pdu: int = 16384) -> list:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return [p.presentation_data_value_list for p in msg.encode_msg(context_id, max_pdu)]


@pytest.mark.parametrize(("sop_class", "sop_instance", "message_id", "status"), [
    (CT, "1.2.3.4.5", 1, 0x0000),  # odd-length instance UID: padded with a NUL
    (CR, "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678", 65535, 0xA700),
    (CT, "2.25.123", 7, 0xC210),
    (CT, "1.2", 0, 0xC212),
    (CR, "1.23", 300, 0xB000),
])
def test_command_set_matches_pynetdicom(sop_class: str, sop_instance: str, message_id: int, status: int) -> None:
    rsp = _response(sop_class, sop_instance, message_id, status)
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    ours = store_response_command(rsp)
    assert ours == encode(msg.command_set, True, True)
    assert _pynetdicom_pdata(rsp, context_id=5) == [[(5, b"\x03" + ours)]]  # one PDV, as SpillingDIMSE sends


def test_anything_else_is_left_to_pynetdicom() -> None:
    with_comment = _response(CT, "1.2.3", 1, 0xC210)
    with_comment.ErrorComment = "why"
    offending = _response(CT, "1.2.3", 1, 0xC210)
    offending.OffendingElement = [0x00100010]
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3"
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    no_instance = _response(CT, "1.2.3", 1, 0)
    no_instance.AffectedSOPInstanceUID = None
    for primitive in (with_comment, offending, request, echo, no_instance):
        assert store_response_command(primitive) is None


def test_send_path_is_the_pinned_upstream_one() -> None:
    """SpillingDIMSE.send_msg re-implements pynetdicom's send_msg for plain C-STORE responses: an upstream
    change must fail here (re-check inbound/streaming.py against it, then update the pin)."""
    for qualname, digest in SEND_MSG_SOURCE_SHA256.items():
        module_name, cls_name, func_name = qualname.rsplit(".", 2)
        func = getattr(getattr(importlib.import_module(module_name), cls_name), func_name)
        assert hashlib.sha256(inspect.getsource(func).encode()).hexdigest() == digest, qualname
