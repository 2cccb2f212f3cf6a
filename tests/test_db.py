"""The database schema is built and upgraded by Alembic migrations: from empty, from the schema x2x made
before migrations existed, concurrently; a database newer than the code is refused with one clear line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from dicom_node.db.engine import Database
from dicom_node.db.migrate import SchemaTooNew, current_revision, forget_migrated, head_revision
from dicom_node.db.tables import Base

ROOT = Path(__file__).resolve().parents[1]
BEFORE_MIGRATIONS = ROOT / "tests" / "data" / "schema-before-migrations.sql"
X2X = str(Path(sys.executable).with_name("x2x"))


def _revision(url: str) -> str | None:
    with create_engine(url).connect() as conn:
        return current_revision(conn)


def _schema_diff(url: str) -> list[object]:
    with create_engine(url).connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_an_empty_database_is_migrated_to_exactly_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    Database(url)
    assert _revision(url) == head_revision()
    assert _schema_diff(url) == [], "the migrations build exactly the tables of dicom_node/db/tables.py"


def test_a_database_made_before_migrations_keeps_its_rows_and_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(BEFORE_MIGRATIONS.read_text())
    con.execute(
        "INSERT INTO jobs (id, idempotency_key, study_instance_uid, sop_instance_uid, source_path, instruction, "
        "seed, params, origin, state, attempts, timings, output_uids, result, created_at, updated_at) VALUES "
        "(7, 'k', '1.2', '1.2.3', '/s.dcm', 'Add the finding of edema.', 0, '{}', 'dimse', 'done', 0, '{}', "
        "'{}', '{}', '2026-11-30 10:00:00', '2026-11-30 10:00:00')"
    )
    con.commit()
    con.close()
    url = f"sqlite:///{path}"
    assert _revision(url) is None
    db = Database(url)
    assert _revision(url) == head_revision()
    assert _schema_diff(url) == []
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT instruction, state FROM jobs WHERE id = 7")).one() == (
            "Add the finding of edema.", "done")


def test_a_newer_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "var" / "jobs.sqlite"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    Database(url)
    with create_engine(url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    forget_migrated()
    with pytest.raises(SchemaTooNew, match="9999_from_the_future.*upgrade x2x"):
        Database(url)
    # the CLI says it in one line, naming the database, without a traceback
    r = _x2x_jobs_list(path.parent)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "upgrade x2x" in lines[0], r.stderr


def _x2x_jobs_list(var_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")}  # this checkout's code
    return subprocess.run([X2X, "jobs", "list"], capture_output=True, text=True, timeout=120,
                          env={"X2X_PATHS__VAR_DIR": str(var_dir), "PATH": "/usr/bin:/bin", **keep, **env})


def _damage_pages(path: Path, pages: range) -> None:
    with open(path, "r+b") as fh:
        for page in pages:
            fh.seek(4096 * page)
            fh.write(b"\xde\xad\xbe\xef" * 30)


def test_a_corrupt_damaged_or_locked_database_is_one_line_naming_it(tmp_path: Path) -> None:
    """main printed a 145-line traceback that never named the file, and a damaged database that still
    opened started and then failed row by row."""
    garbage = tmp_path / "garbage" / "jobs.sqlite"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not an SQLite database" * 200)

    damaged = tmp_path / "damaged" / "jobs.sqlite"
    damaged.parent.mkdir()
    db = Database(f"sqlite:///{damaged}")
    with db.session() as s:
        for i in range(300):
            s.execute(text("INSERT INTO study_instances (path, study_instance_uid, status, updated_at) VALUES "
                           "(:p, '1.2', 'job', '2026-01-01')"), {"p": f"/spool/{i:05d}/" + "x" * 200})
    db.engine.dispose()
    con = sqlite3.connect(damaged)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    _damage_pages(damaged, range(20, 50, 3))
    con = sqlite3.connect(damaged)
    assert con.execute("SELECT count(*) FROM jobs").fetchone() == (0,), "it still opens: the dangerous kind"
    con.close()

    locked = tmp_path / "locked" / "jobs.sqlite"
    locked.parent.mkdir()
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # a rollback-journal database: nobody else may even read
    try:
        results = {
            "garbage": (_x2x_jobs_list(garbage.parent), garbage, "move it away"),
            "damaged": (_x2x_jobs_list(damaged.parent), damaged, "restore it from a backup"),
            "locked": (_x2x_jobs_list(locked.parent, X2X_DATABASE__BUSY_TIMEOUT_SECONDS="1"), locked,
                       "stop the other x2x"),
        }
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for what, (r, path, advice) in results.items():
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (what, r.returncode, r.stderr[-2000:])
        assert str(path) in lines[0] and advice in lines[0], (what, lines[0])


_OPEN_AT_ONCE = """
import sys, time
from dicom_node.db.engine import Database
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
Database(url)
"""


def test_processes_migrating_one_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    import time

    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    start = f"{time.time() + 3:.3f}"
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, url, start], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for _ in range(6)]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-800:] for o in outputs]
    assert _revision(url) == head_revision()
