"""Run `x2x serve` as a real subprocess for end-to-end tests.

    from tests.support.node import run_node

    with run_node(tmp_path, '''
    [[rules]]
    called_ae = "X2X_EFFUSION"
    instruction = "Add the finding of pleural effusion."
    ''', model_dir=tiny_model_dir) as node:
        subprocess.run(["storescu", "-R", "-aec", "X2X_EFFUSION", "127.0.0.1", str(node.port), file])
        node.wait_for_jobs(1)

`run_node(tmp_path, config_toml="", env=None, **options)` is a context manager yielding a `NodeProcess`
(`port`, `api_port`, `var_dir`, `proc`, `config_path`, `log_path`). It writes `config_toml` to a file,
starts `x2x -c FILE serve` on free 127.0.0.1 ports with a temp var dir, waits until C-ECHO answers
(or `ready_check(node)` returns True), and on exit stops it with SIGTERM (SIGKILL after 20 s).

Ports, host and var dir are passed as environment (`X2X_NODE__PORT`, `X2X_NODE__HOST`,
`X2X_API__PORT`, `X2X_PATHS__VAR_DIR`), which override the TOML; pass `port=` / `api_port=` /
`var_dir=` to choose them (e.g. to restart a node on the same spool). Options:
`model_dir` (sets X2X_MODEL__PATH, e.g. the `tiny_model_dir` fixture; without it the node builds the
tiny fixture itself, which is slow), `quiet_seconds` (default 0.5 for tests), `receiver_processes`,
`ready_check`, `ready_timeout`, `address_space_mb` (RLIMIT_AS of the node and its children: a test that
attacks the node's memory cannot take the machine with it). Helpers on `NodeProcess`: `echo()`, `log_text()`, `kill()`
(SIGKILL), `stop()`, `jobs()`, `studies()`, `study_instances()` (rows of the node's SQLite DB as
dicts), `wait_for(predicate, timeout)`, `wait_for_jobs(n)`, `spool_files()`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import free_port

_counter = itertools.count(1)
X2X = str(Path(sys.executable).with_name("x2x"))


@dataclass
class NodeProcess:
    port: int
    api_port: int
    var_dir: Path
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    # state -------------------------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.var_dir / "spool"

    @property
    def db_path(self) -> Path:
        return self.var_dir / "jobs.sqlite"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*/*/*.dcm"))

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if not self.db_path.exists():
            return []
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, args)]
        except sqlite3.OperationalError as exc:  # table not created yet
            if "no such table" in str(exc):
                return []
            raise
        finally:
            con.close()

    def jobs(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM jobs ORDER BY id")

    def studies(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM studies")

    def study_instances(self, status: str | None = None) -> list[dict[str, Any]]:
        if status is None:
            return self._rows("SELECT * FROM study_instances")
        return self._rows("SELECT * FROM study_instances WHERE status = ?", (status,))

    # waiting -----------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited ({self.proc.returncode}) waiting for {what}:\n"
                                     + self.log_text()[-4000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; node log tail:\n" + self.log_text()[-4000:])
            time.sleep(0.1)

    def wait_for_jobs(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        return self.wait_for(lambda: (j := self.jobs()) and len(j) >= n and j, timeout, f"{n} job(s)")

    # control -----------------------------------------------------------------------------
    def echo(self, timeout: float = 5.0) -> bool:
        return echo(self.port, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL (a crash): no clean shutdown."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # receiver child processes share the group; make sure none is left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return int(self.proc.returncode)


def echo(port: int, host: str = "127.0.0.1", timeout: float = 5.0, calling_ae: str = "ECHOSCU",
         ssl_context: Any = None, called_ae: str = "X2X") -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    tls_args = (ssl_context, "localhost") if ssl_context is not None else None
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    except Exception:
        return False
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def start_node(
    tmp_path: Path,
    config_toml: str = "",
    env: dict[str, str] | None = None,
    *,
    port: int | None = None,
    api_port: int | None = None,
    var_dir: Path | None = None,
    model_dir: Path | None = None,
    quiet_seconds: float | None = 0.5,
    receiver_processes: int | None = None,
    ready_check: Callable[[NodeProcess], bool] | None = None,
    ready_timeout: float = 90.0,
    address_space_mb: int | None = None,
) -> NodeProcess:
    n = next(_counter)
    var_dir = var_dir or tmp_path / f"node-var-{n}"
    var_dir.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / f"node-{n}.toml"
    config_path.write_text(config_toml)
    log_path = tmp_path / f"node-{n}.log"
    port = port or free_port()
    if api_port is None:
        api_port = free_port()
        while api_port == port:  # two free_port() calls may hand out the same port (seen once under load)
            api_port = free_port()
    full_env = dict(os.environ)
    full_env.update(
        X2X_NODE__HOST="127.0.0.1",
        X2X_NODE__PORT=str(port),
        X2X_API__HOST="127.0.0.1",
        X2X_API__PORT=str(api_port),
        X2X_PATHS__VAR_DIR=str(var_dir),
        TCP_NODELAY="1",
        PYTHONUNBUFFERED="1",
    )
    full_env.pop("X2X_CONFIG", None)
    if model_dir is not None:
        full_env["X2X_MODEL__PATH"] = str(model_dir)
    if quiet_seconds is not None:
        full_env["X2X_NODE__STUDY_QUIET_SECONDS"] = str(quiet_seconds)
    if receiver_processes is not None:
        full_env["X2X_NODE__RECEIVER_PROCESSES"] = str(receiver_processes)
    full_env.update(env or {})
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child

    def limit_memory() -> None:
        if address_space_mb is not None:
            import resource

            limit = address_space_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.Popen(
        [X2X, "-c", str(config_path), "serve"],
        stdout=log_file, stderr=subprocess.STDOUT, env=full_env, start_new_session=True,
        preexec_fn=limit_memory if address_space_mb is not None else None,
    )
    log_file.close()
    node = NodeProcess(port, api_port, var_dir, proc, config_path, log_path, full_env)
    check = ready_check or (lambda nd: nd.echo(timeout=2.0))
    try:
        node.wait_for(lambda: "DICOM SCP listening" in node.log_text() and check(node), ready_timeout,
                      "the node to answer")
    except BaseException:
        node.stop()
        raise
    return node


@contextlib.contextmanager
def run_node(tmp_path: Path, config_toml: str = "", env: dict[str, str] | None = None,
             **options: Any) -> Iterator[NodeProcess]:
    node = start_node(tmp_path, config_toml, env, **options)
    try:
        yield node
    finally:
        node.stop()
