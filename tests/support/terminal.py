"""Run a command with its stderr on a pseudo-terminal, as a person at a shell would see it.

    result = run_on_terminal([x2x, "edit", ...], env)   # -> (returncode, stdout, what the terminal showed)
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time


def run_on_terminal(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300.0,
                    ) -> tuple[int, str, str]:
    """stdout is a pipe (the result line), stderr a 40x120 terminal (progress goes there)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    full_env = dict(os.environ if env is None else env, TERM="xterm-256color")
    for var in ("NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        full_env.pop(var, None)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=full_env)
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        stdout = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, stdout.decode(errors="replace"), shown.decode(errors="replace")


# exec the command with SIGINT at its default, so Python inside it installs its KeyboardInterrupt handler
_EXEC_WITH_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                             "os.execv(sys.argv[1], sys.argv[1:])")


def ctrl_c_reaches(cmd: list[str]) -> list[str]:
    """`cmd` started so that SIGINT acts as Ctrl-C at a terminal. A shell that started the tests in the
    background (`bash .ci/run &`) leaves SIGINT ignored, every child inherits that, and a Python program
    started with SIGINT ignored never raises KeyboardInterrupt. Same process (exec), same PID."""
    return [sys.executable, "-c", _EXEC_WITH_DEFAULT_SIGINT, *cmd]
