"""Bring a database to this code's schema with Alembic, safely when several processes start at once.

`upgrade_to_head(engine)`:
- an empty database gets every migration;
- a database made before migrations existed (the tables of revision 0001, no `alembic_version`) is
  stamped 0001, then upgraded;
- a database stamped with a revision this code does not know (written by a newer x2x) is refused with
  `SchemaTooNew`, which names the database and what to do — never a crash halfway through.

Only one process migrates at a time: SQLite files take an exclusive lock on `<db>.migrate-lock`,
PostgreSQL takes an advisory lock on the migrating connection; the others wait, then find nothing to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("x2x.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE_REVISION = "0001"  # the schema x2x created with create_all before migrations
_PG_LOCK_KEY = 0x5832_5844  # "X2XD": any constant shared by every x2x process
_done: set[tuple[str, int]] = set()
_done_lock = threading.Lock()


class DatabaseUnusable(RuntimeError):
    """The database cannot be used by this x2x; the message is one line naming it and what to do."""


class SchemaTooNew(DatabaseUnusable):
    """The database was migrated by a newer x2x than this one."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _sqlite_file(engine: Engine) -> Path | None:
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """SQLite: a lock file beside the database, taken before the first connection -- connecting to a new
    file switches it to WAL, which concurrent first connections can fail with "database is locked"."""
    path = _sqlite_file(engine)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".migrate-lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _server_lock(engine: Engine, connection: Connection) -> Iterator[None]:
    """PostgreSQL: an advisory lock on the migrating connection."""
    if engine.url.get_backend_name() != "postgresql":
        yield
        return
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
    try:
        yield
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})


def _cache_key(engine: Engine) -> tuple[str, int]:
    path = _sqlite_file(engine)
    inode = path.stat().st_ino if path is not None and path.exists() else 0
    return (engine.url.render_as_string(hide_password=False), inode)


def upgrade_to_head(engine: Engine) -> None:
    """Create or upgrade the schema (once per database and process)."""
    key = _cache_key(engine)
    with _done_lock:
        if key in _done:
            return
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    with _file_lock(engine), engine.connect() as connection, _server_lock(engine, connection):
        current = current_revision(connection)
        if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
            raise SchemaTooNew(
                f"database {engine.url.render_as_string(hide_password=True)} has schema revision {current}, "
                f"newer than this x2x knows (latest {head}): upgrade x2x, or point [database] url at a "
                "database of this version"
            )
        if current != head:
            cfg.attributes["connection"] = connection
            if current is None and inspect(connection).has_table("jobs"):
                log.info("database made before migrations: stamping revision %s", BASELINE_REVISION)
                command.stamp(cfg, BASELINE_REVISION)
            log.info("database schema %s -> %s", current or "empty", head)
            command.upgrade(cfg, "head")
            connection.commit()
    with _done_lock:
        _done.add(_cache_key(engine))


def forget_migrated() -> None:
    """Forget which databases this process has migrated (tests that rebuild a database in place)."""
    with _done_lock:
        _done.clear()


__all__ = ["DatabaseUnusable", "SchemaTooNew", "current_revision", "forget_migrated", "head_revision",
           "upgrade_to_head"]
