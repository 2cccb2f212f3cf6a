"""Initial schema: jobs, job_leases, workers, studies, study_instances (as created before migrations).

Revision ID: 0001
Revises:
Create Date: 2026-12-01

A database created by x2x before migrations existed has exactly these tables and no alembic_version
table; dicom_node.db.migrate stamps such a database with this revision instead of running it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=True),
        sa.Column("model_hash", sa.String(length=64), nullable=True),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("called_ae", sa.String(length=16), nullable=True),
        sa.Column("destination", sa.String(length=200), nullable=True),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("output_uids", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_idempotency_key", "jobs", ["idempotency_key"], unique=True)
    op.create_index("ix_jobs_sop_instance_uid", "jobs", ["sop_instance_uid"])
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_study_instance_uid", "jobs", ["study_instance_uid"])
    op.create_table(
        "job_leases",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    op.create_table(
        "studies",
        sa.Column("study_instance_uid", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("called_ae", sa.String(length=16), nullable=True),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("jobs_created", sa.Integer(), nullable=False),
        sa.Column("skipped_count", sa.Integer(), nullable=False),
        sa.Column("request_source", sa.String(length=20), nullable=True),
        sa.Column("instruction", sa.Text(), nullable=True),
        sa.Column("request_error", sa.Text(), nullable=True),
        sa.Column("first_received_at", sa.DateTime(), nullable=True),
        sa.Column("last_received_at", sa.DateTime(), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("study_instance_uid"),
    )
    op.create_index("ix_studies_state", "studies", ["state"])
    op.create_table(
        "study_instances",
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=128), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("path"),
    )
    op.create_index("ix_study_instances_sop_instance_uid", "study_instances", ["sop_instance_uid"])
    op.create_index("ix_study_instances_status", "study_instances", ["status"])
    op.create_index("ix_study_instances_study_instance_uid", "study_instances", ["study_instance_uid"])


def downgrade() -> None:
    for table in ("study_instances", "studies", "workers", "job_leases", "jobs"):
        op.drop_table(table)
