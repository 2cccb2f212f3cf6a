"""inbound/commands.py converts C-STORE-RQ command sets into the primitive pynetdicom makes of them, writes
the C-STORE-RSP command set byte for byte as pynetdicom encodes it, and stands in for the pynetdicom code
it was checked against."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from io import BytesIO
from pathlib import Path

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode

from dicom_node.inbound.commands import SOURCE_SHA256, store_request_primitive, store_response_command

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


def _received(rq: C_STORE, max_pdu: int = 16384) -> DIMSEMessage:
    """`rq` encoded by pynetdicom, then decoded as the receiving DIMSE provider decodes it."""
    sent = C_STORE_RQ()
    sent.primitive_to_message(rq)
    message = DIMSEMessage()
    done = [message.decode_msg(pdata) for pdata in sent.encode_msg(3, max_pdu)]
    assert done[-1]
    return message


def _request(sop_instance: str = "1.2.3.4.5", message_id: int = 1, priority: int = 2, dataset: bool = True
             ) -> C_STORE:
    rq = C_STORE()
    rq.MessageID = message_id
    rq.AffectedSOPClassUID = CT
    rq.AffectedSOPInstanceUID = sop_instance
    rq.Priority = priority
    rq.DataSet = BytesIO(b"\x08\x00\x18\x00" * 5) if dataset else None
    return rq


@pytest.mark.parametrize("rq", [
    _request(),
    _request("1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678", 65535, 0),
    _request("1.23", 0, 1),
])
def test_request_primitive_matches_pynetdicom(rq: C_STORE) -> None:
    message = _received(rq)
    ours = store_request_primitive(message)
    upstream = type(message).message_to_primitive(message)
    assert ours is not None
    assert vars(ours) == vars(upstream)
    assert ours.DataSet is message.data_set


def test_unusual_requests_are_left_to_pynetdicom() -> None:
    move = _request()
    move.MoveOriginatorApplicationEntityTitle = "MOVER"
    move.MoveOriginatorMessageID = 3
    response = _received(_response(CT, "1.2.3", 1, 0))
    for message in (_received(move), response):
        assert store_request_primitive(message) is None
    two_values = _received(_request("1.2.3.4"))
    two_values.encoded_command_set = BytesIO(two_values.encoded_command_set.getvalue().replace(b"1.2.3.4", b"1.2\\3.4"))
    assert store_request_primitive(two_values) is None


def test_the_scp_converts_and_answers_with_these(tmp_path, chest_cr_path) -> None:
    """Through a real storescu: the SCP's DIMSE provider uses these for a C-STORE (and still stores it)."""
    from dicom_node.config import NodeConfig
    from dicom_node.inbound import commands, streaming
    from dicom_node.inbound.scp import StorageSCP
    from dicom_node.inbound.spool import Spool
    from tests.conftest import free_port
    from tests.support.dicom_files import store_statuses, storescu

    calls: dict[str, int] = {"request": 0, "response": 0}
    real_request, real_response = commands.store_request_primitive, commands.store_response_command

    def counted_request(message):  # type: ignore[no-untyped-def]
        out = real_request(message)
        calls["request"] += out is not None
        return out

    def counted_response(primitive):  # type: ignore[no-untyped-def]
        out = real_response(primitive)
        calls["response"] += out is not None
        return out

    streaming.store_request_primitive, streaming.store_response_command = counted_request, counted_response
    try:
        events: list = []
        scp = StorageSCP(NodeConfig(host="127.0.0.1", port=free_port()), Spool(tmp_path / "spool"), events.append)
        _, port = scp.start()
        try:
            assert store_statuses(storescu(port, chest_cr_path)) == ["Success"]
        finally:
            scp.stop()
        assert [type(e).__name__ for e in events][:1] == ["InstanceReceived"]
        assert Path(events[0].path).read_bytes()[128:132] == b"DICM"
    finally:
        streaming.store_request_primitive, streaming.store_response_command = real_request, real_response
    assert calls == {"request": 1, "response": 1}


def test_replaced_code_is_the_pinned_upstream_one() -> None:
    """SpillingDIMSE re-implements pynetdicom's send_msg for plain C-STORE responses and message_to_primitive
    for plain C-STORE requests: an upstream change must fail here (re-check inbound/streaming.py and
    inbound/commands.py against it, then update the pin)."""
    for qualname, digest in SOURCE_SHA256.items():
        module_name, cls_name, func_name = qualname.rsplit(".", 2)
        func = getattr(getattr(importlib.import_module(module_name), cls_name), func_name)
        assert hashlib.sha256(inspect.getsource(func).encode()).hexdigest() == digest, qualname
