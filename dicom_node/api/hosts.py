"""The Host header check: the API answers only the names it is reached by (`[api] allowed_hosts`), so a
web page on another name that resolves to this machine (DNS rebinding) cannot read or drive it through
a browser. /healthz and /readyz answer any Host: orchestrators probe them by IP, and they say nothing
about patients."""

from __future__ import annotations

from typing import Any

from starlette.responses import PlainTextResponse

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    """ASGI middleware: 400 for a Host not in `allowed` (entries may start with "*." for subdomains)."""

    def __init__(self, app: Any, allowed: list[str]):
        self.app = app
        self.exact = {h.lower() for h in allowed if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))

    def allows(self, host: str) -> bool:
        name = _host_name(host)
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("path") not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not self.allows(host):
                response = PlainTextResponse(
                    f"Host {host[:100]!r} is not one this node answers ([api] allowed_hosts)", status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
