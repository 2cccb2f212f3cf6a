"""Process counters on prometheus_client's default registry (rendered by the API's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter

send_failures_total = Counter(
    "x2x_send_failures_total",
    "Failed attempts to deliver a job's result objects to its destination.",
)

# Inbound (receive / studies) --------------------------------------------------------------------
instances_received_total = Counter(
    "x2x_instances_received_total",
    "Instances acknowledged with Success by the SCP (duplicates included, see the label).",
    ["outcome"],  # stored | duplicate
)
instances_refused_total = Counter(
    "x2x_instances_refused_total",
    "C-STORE requests answered with a failure status.",
    ["status"],  # out-of-resources | cannot-understand
)
associations_rejected_total = Counter(
    "x2x_associations_rejected_total",
    "Associations rejected (calling AE not allowed, too many associations, ...).",
)
studies_completed_total = Counter(
    "x2x_studies_completed_total",
    "Studies that reached completion (associations released + quiet period) and were evaluated.",
)
jobs_created_total = Counter(
    "x2x_jobs_created_total",
    "Jobs created from received studies (idempotent resends do not count).",
)
instances_skipped_total = Counter(
    "x2x_instances_skipped_total",
    "Instances not turned into jobs (not a frontal chest radiograph, no or invalid edit request).",
)

