"""Alembic environment: migrations run on the connection dicom_node.db.migrate hands over."""

from __future__ import annotations

from alembic import context

from dicom_node.db.tables import Base

connection = context.config.attributes["connection"]
# batch mode: SQLite cannot ALTER most things in place; Alembic copies the table instead.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
