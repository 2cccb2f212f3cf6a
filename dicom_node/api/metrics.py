"""Prometheus metrics read from the job store at scrape time.

Counters that count events in one process (instances received, associations rejected, studies
completed, send failures) live in `dicom_node.metrics` on the default registry. What several processes
share — jobs by state, queue depth, edit durations — is read from the database when Prometheus
scrapes, so the numbers are right however many workers run, on whichever machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select

import dicom_node.metrics  # noqa: F401  (the process counters register on the default registry)
from dicom_node.api.auth import require_reader
from dicom_node.api.deps import get_ctx
from dicom_node.context import NodeContext
from dicom_node.db.tables import Job
from dicom_node.jobs.states import JobState

router = APIRouter(tags=["health"])

EDIT_SECONDS_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def edit_seconds(timings: dict[str, Any] | None, result: dict[str, Any] | None = None) -> float | None:
    """Seconds the editor took for one job, from what the pipeline recorded."""
    for source in (timings or {}, (result or {}).get("timings") or {}):
        for key in ("edit_s", "edit", "edit_seconds", "total"):
            value = source.get(key)
            if isinstance(value, (int, float)):
                return float(value)
    return None


class JobStoreCollector(Collector):
    def __init__(self, ctx: NodeContext):
        self._ctx = ctx

    def collect(self) -> Iterator[Metric]:
        store = self._ctx.store
        by_state = store.count_by_state()
        jobs = GaugeMetricFamily("x2x_jobs", "Jobs in the job store by state", labels=["state"])
        for state, n in sorted(by_state.items()):
            jobs.add_metric([state], n)
        yield jobs
        depth = by_state.get(JobState.QUEUED.value, 0) + by_state.get(JobState.RECEIVED.value, 0)
        yield GaugeMetricFamily("x2x_queue_depth", "Jobs waiting for a worker (received + queued)", value=depth)
        yield GaugeMetricFamily(
            "x2x_jobs_awaiting_retry", "Failed jobs waiting for their next attempt",
            value=by_state.get(JobState.FAILED.value, 0),
        )
        with store.db.session() as s:
            rows = s.execute(select(Job.timings, Job.result).where(Job.state == JobState.DONE.value)).all()
        values = [v for t, r in rows if (v := edit_seconds(t, r)) is not None]
        buckets: list[tuple[str, float]] = []
        for bound in EDIT_SECONDS_BUCKETS:
            buckets.append((repr(bound), float(sum(1 for v in values if v <= bound))))
        buckets.append(("+Inf", float(len(values))))
        hist = HistogramMetricFamily("x2x_edit_seconds", "Editor seconds per completed job")
        hist.add_metric([], buckets, sum_value=float(sum(values)))
        yield hist


def render_metrics(ctx: NodeContext) -> bytes:
    """Process counters (default registry) followed by the job-store metrics."""
    local = CollectorRegistry(auto_describe=False)
    local.register(JobStoreCollector(ctx))
    return generate_latest(REGISTRY) + generate_latest(local)


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_reader)])
def metrics(ctx: NodeContext = Depends(get_ctx)) -> Response:
    return Response(render_metrics(ctx), media_type=CONTENT_TYPE_LATEST)
