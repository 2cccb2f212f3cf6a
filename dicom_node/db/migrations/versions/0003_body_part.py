"""study_instances.body_part: Body Part Examined as the modality wrote it (CHEST, THORAX, LUNG, ...).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Eligibility accepts a table of chest synonyms (studies/eligibility.py); the value that was accepted (or
refused) is kept with the instance's outcome.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study_instances") as batch:
        batch.add_column(sa.Column("body_part", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("study_instances") as batch:
        batch.drop_column("body_part")
