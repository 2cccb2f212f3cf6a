"""The database handle every stage shares: one engine, short transactions, schema migrated on open.

SQLite (the embedded default) runs in WAL mode with a 30 s busy timeout, because the SCP's study
tracker, the API and the workers write the same file at once; any SQLAlchemy URL works
(PostgreSQL for several machines).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.migrate import upgrade_to_head


def make_engine(url: str) -> Engine:
    sqlite = url.startswith("sqlite")
    # sqlite3's own timeout covers the first statement on a new connection (PRAGMA journal_mode),
    # which runs before the busy_timeout pragma below takes effect.
    connect_args = {"timeout": 30} if sqlite else {}
    engine = create_engine(url, future=True, pool_pre_ping=True, connect_args=connect_args)
    if sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


class Database:
    """An engine on `url` whose schema is at this code's head revision."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        upgrade_to_head(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, future=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on an exception."""
        with self._sessions() as s, s.begin():
            yield s
