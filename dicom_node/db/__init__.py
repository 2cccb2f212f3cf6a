"""The node's database: every table (tables.py), the engine and sessions (engine.py), and the
Alembic migrations that build and upgrade the schema on start (migrate.py, migrations/)."""
