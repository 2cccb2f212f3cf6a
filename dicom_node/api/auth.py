"""Bearer token for the mutating endpoints: from the config, else generated once and kept in a 0600 file."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request, status

from dicom_node.config import Settings

log = logging.getLogger("x2x.api.auth")

TOKEN_FILE = "api-token"


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


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 unless `Authorization: Bearer <token>` matches (constant-time compare)."""
    expected: str = request.app.state.api_token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given.strip(), expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
