"""Who may use the API.

- Mutations (POST, DELETE) need `Authorization: Bearer <api token>`: the configured `[api] token`, else
  one generated once into `<var_dir>/api-token` (0600; the token itself is never logged).
- Reads (every GET but /healthz and /readyz, which orchestrators probe) need the same token, or the
  optional read-only `[api] read_token`, or the dashboard's cookie; `[api] public_reads = true` opens
  them. Previews are images of patients, and /jobs and /studies carry UIDs and instructions.
- The dashboard cookie is set by `POST /login` (the dashboard's form) or `GET /?token=...`: an HMAC of
  the token (HttpOnly, SameSite=Strict) that grants reads only, so a leaked cookie cannot mutate.
- Tokens are compared as UTF-8 bytes in constant time: any header a client sends gives 401, never 500.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request, status

from dicom_node.config import Settings

log = logging.getLogger("x2x.api.auth")

TOKEN_FILE = "api-token"
COOKIE = "x2x_read"


def token_file(settings: Settings) -> Path:
    return settings.var_dir / TOKEN_FILE


def resolve_token(settings: Settings) -> str:
    """The configured token; else the one in <var_dir>/api-token; else a new one written there (0600).

    The token itself is never logged, only where it is."""
    if settings.api.token is not None and settings.api.token.get_secret_value():
        return settings.api.token.get_secret_value()
    path = token_file(settings)
    if path.exists():
        existing = path.read_text().strip()
        if existing:
            log.info("API token: using the one in %s", path)
            return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode is masked by umask and ignored for an existing file
    log.warning("no [api] token configured: generated one and wrote it to %s (mode 0600)", path)
    return token


def read_tokens(settings: Settings, api_token: str) -> list[str]:
    extra = settings.api.read_token.get_secret_value() if settings.api.read_token is not None else ""
    return [api_token] + ([extra] if extra else [])


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _bearer(request: Request) -> str | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def cookie_value(token: str) -> str:
    """What the dashboard cookie holds for `token` (not the token: it cannot be used as a bearer)."""
    return hmac.new(token.encode("utf-8"), b"x2x dashboard read access", hashlib.sha256).hexdigest()


def _unauthorised(what: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail=what,
                         headers={"WWW-Authenticate": "Bearer"})


def require_token(request: Request) -> None:
    """FastAPI dependency for mutations: 401 unless `Authorization: Bearer <api token>` matches."""
    given = _bearer(request)
    if given is None or not _same(given, request.app.state.api_token):
        raise _unauthorised("missing or wrong bearer token")


def can_read(request: Request) -> bool:
    """The API token or the read token as a bearer, or a valid dashboard cookie (or public reads)."""
    if request.app.state.public_reads:
        return True
    tokens: list[str] = request.app.state.read_tokens
    given = _bearer(request)
    if given is not None:
        return any(_same(given, t) for t in tokens)
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and any(_same(cookie, cookie_value(t)) for t in tokens)


def require_reader(request: Request) -> None:
    """FastAPI dependency for reads."""
    if not can_read(request):
        raise _unauthorised("reading needs the API token (or [api] read_token) as a bearer, or the dashboard "
                            "cookie (log in at /)")


def matching_token(request: Request, given: str) -> str | None:
    """The read-capable token `given` equals, if any (the dashboard login)."""
    return next((t for t in request.app.state.read_tokens if _same(given, t)), None)
