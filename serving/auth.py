"""API keys for `/v1`: FastAPI's bearer scheme as a router-level dependency of every `/v1` router, so the
decision is made on the route a request resolved to, whatever prefix it came through (a `Mount`, a proxy's
`root_path`), and the OpenAPI page documents the scheme on every `/v1` operation. 401 without a bearer key,
403 with a wrong one; `/health`, `/ready`, `/metrics`, `/` and the static files stay open. Keys are compared
in constant time and never logged. :mod:`serving.fastpath` applies the same check before it answers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(
    auto_error=False, description="An API key from PULSE_SERVING__API_KEYS, as `Authorization: Bearer <key>`."
)


def check_key(credentials: HTTPAuthorizationCredentials | None, keys: tuple[bytes, ...]) -> None:
    """Raises 401 without a bearer key, 403 with one that is not among ``keys``; no keys means open."""
    if not keys:
        return
    if credentials is None:
        raise HTTPException(
            401, detail="missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    given = credentials.credentials.encode("latin-1")  # the header's bytes (Starlette decodes it as latin-1)
    accepted = False
    for key in keys:  # every key compared, so the time taken does not say which one matched
        accepted |= hmac.compare_digest(given, key)
    if not accepted:
        raise HTTPException(403, detail="API key not accepted")


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> None:
    check_key(credentials, request.app.state.api_keys)


async def accepted(request: Request) -> bool:
    """What :func:`require_api_key` decides, as a yes/no for code that answers before routing."""
    try:
        check_key(await bearer(request), request.app.state.api_keys)
    except HTTPException:
        return False
    return True


API_KEY = Security(require_api_key)  # dependencies=[API_KEY] on every /v1 router
