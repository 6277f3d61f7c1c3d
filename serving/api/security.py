"""API-key check for /v1/* and /infill: `Authorization: Bearer KEY` or `X-Api-Key: KEY`.

Constant-time comparison (hmac.compare_digest on bytes). With no key configured every request
passes. The key is never logged, and the 401 message does not say which header was wrong.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving.api.errors import APIError

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token.")
_x_api_key = APIKeyHeader(name="X-Api-Key", auto_error=False, description="API key (llama.cpp style).")


def _matches(given: str | None, expected: bytes) -> bool:
    if not given:
        return False
    # Header values arrive latin-1 decoded; encode back to the bytes the client sent.
    return hmac.compare_digest(given.encode("latin-1", "replace"), expected)


async def require_api_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    x_api_key: str | None = Depends(_x_api_key),
) -> None:
    expected: bytes | None = request.app.state.api_key
    if expected is None:
        return
    ok = _matches(bearer.credentials if bearer else None, expected)
    ok = _matches(x_api_key, expected) or ok  # evaluate both: timing does not depend on which header
    if not ok:
        raise APIError(401, "missing or invalid API key", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
