"""A throwaway redis-server for the scale-out tests (no persistence, its own port)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port, require_tool


@contextlib.contextmanager
def redis_server(tmp_path: Path) -> Iterator[str]:
    """Yield the URL (no database number) of a redis-server that answers PING."""
    with redis_server_on(tmp_path, free_port()) as url:
        yield url


@contextlib.contextmanager
def redis_server_on(tmp_path: Path, port: int) -> Iterator[str]:
    """`redis_server` on a port chosen by the caller (e.g. a broker that comes up late)."""
    exe = require_tool("redis-server")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
