"""The database handle every stage shares: one engine, short transactions, schema migrated on open.

SQLite (the embedded default) runs in WAL mode with a busy timeout (`database.busy_timeout_seconds`),
because the SCP's study tracker, the API and the workers write the same file at once; any SQLAlchemy
URL works (PostgreSQL for several machines).

A database this x2x cannot use — not a database, damaged, locked past the timeout, unopenable, or
migrated by a newer x2x — raises `DatabaseUnusable` on open with one line naming it and what to do.
`retry_locked(db, fn)` re-runs a write that lost a lock race until `database.lock_retry_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.migrate import DatabaseUnusable, SchemaTooNew, upgrade_to_head

log = logging.getLogger("x2x.db")

T = TypeVar("T")
_checked: set[str] = set()
_checked_lock = threading.Lock()


def make_engine(url: str, busy_timeout_s: float = 30.0) -> Engine:
    sqlite = url.startswith("sqlite")
    # sqlite3's own timeout covers the first statement on a new connection (PRAGMA journal_mode),
    # which runs before the busy_timeout pragma below takes effect.
    connect_args = {"timeout": busy_timeout_s} if sqlite else {}
    engine = create_engine(url, future=True, pool_pre_ping=True, connect_args=connect_args)
    if sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cur.close()

    return engine


def is_locked(exc: BaseException) -> bool:
    """A lock held by another writer (SQLite busy/locked; PostgreSQL lock timeout, deadlock,
    serialization failure): worth trying again."""
    if not isinstance(exc, DBAPIError):
        return False
    text_ = str(exc.orig).lower()
    if "database is locked" in text_ or "database table is locked" in text_ or "database is busy" in text_:
        return True
    return getattr(exc.orig, "sqlstate", None) in ("40001", "40P01", "55P03")


def describe(url: str) -> str:
    """The database as a user recognises it: the file of an SQLite URL, else the URL without password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return str(parsed.database)
    return parsed.render_as_string(hide_password=True)


def unusable(url: str, exc: BaseException) -> DatabaseUnusable:
    """The one-line error for a database that failed to open."""
    where = describe(url)
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = detail.lower()
    if "not a database" in low or "malformed" in low or "corrupt" in low or "damaged" in low:
        return DatabaseUnusable(f"database {where} is damaged or not an x2x database ({detail}): restore it from "
                                "a backup, or move it away to start with an empty one")
    if is_locked(exc) or "locked" in low:
        return DatabaseUnusable(f"database {where} is locked by another process ({detail}): stop the other x2x "
                                "or sqlite3 that holds it, or wait, then start again")
    if "unable to open" in low or "readonly" in low or "read-only" in low or "permission" in low:
        return DatabaseUnusable(f"cannot open database {where} ({detail}): check that its folder exists and is "
                                "writable, or set [database] url")
    return DatabaseUnusable(f"cannot use database {where} ({detail}): check [database] url")


def _quick_check(engine: Engine, url: str) -> None:
    """SQLite only, once per file and process: a damaged file must fail at start, not row by row."""
    if not url.startswith("sqlite") or url.endswith(":memory:"):
        return
    with _checked_lock:
        if url in _checked:
            return
    with engine.connect() as connection:
        problems = [" ".join(str(row[0]).split()) for row in connection.execute(text("PRAGMA quick_check(3)"))]
    if problems != ["ok"]:
        raise DatabaseUnusable(f"database {describe(url)} is damaged (quick_check: {'; '.join(problems)[:300]}): "
                               "restore it from a backup, or move it away to start with an empty one")
    with _checked_lock:
        _checked.add(url)


class Database:
    """An engine on `url` whose schema is at this code's head revision."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0, lock_retry_s: float = 120.0):
        self.url = url
        self.lock_retry_s = lock_retry_s
        self.engine = make_engine(url, busy_timeout_s)
        try:
            upgrade_to_head(self.engine)  # first: it connects under the migration lock (a new file's WAL switch)
            _quick_check(self.engine, url)
        except (DatabaseUnusable, SchemaTooNew):
            raise
        except SQLAlchemyError as exc:
            raise unusable(url, exc) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, future=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on an exception."""
        with self._sessions() as s, s.begin():
            yield s


def retry_locked(db: Database, write: Callable[[], T]) -> T:
    """Run `write` (one or more whole transactions); while it fails on a lock, run it again with a
    growing pause, for up to `db.lock_retry_s` seconds, then let the error through."""
    deadline = time.monotonic() + db.lock_retry_s
    pause = 0.1
    while True:
        try:
            return write()
        except DBAPIError as exc:
            if not is_locked(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("database locked; retrying in %.1f s (%s)", pause, str(exc.orig)[:100])
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
