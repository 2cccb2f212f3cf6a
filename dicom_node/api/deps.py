"""What every route depends on: the node's context, and where inbound HTTP instances are reported."""

from __future__ import annotations

from fastapi import Request

from dicom_node.context import NodeContext
from dicom_node.inbound.events import EventSink


def get_ctx(request: Request) -> NodeContext:
    ctx: NodeContext = request.app.state.ctx
    return ctx


def get_sink(request: Request) -> EventSink:
    """The running node's study tracker (STOW studies complete after the same quiet period as C-STORE
    ones), or, for an API without a node, immediate completion at the end of the request."""
    sink: EventSink = request.app.state.sink
    return sink
