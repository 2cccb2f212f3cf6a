"""Alembic migration scripts of the node's database (run by dicom_node.db.migrate, never by hand)."""
