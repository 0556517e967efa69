"""API keys for `/v1`: checked in a pure ASGI middleware, before routing, so the hot path pays a header
lookup instead of a FastAPI dependency; the OpenAPI page still documents the bearer scheme on every `/v1`
operation. 401 without a bearer key, 403 with a wrong one; `/health`, `/ready`, `/metrics`, `/` and the
static files stay open. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac
import json

from fastapi import FastAPI

PROTECTED_PREFIX = "/v1/"
SCHEME = "HTTPBearer"


def _reject(status: int, detail: str) -> tuple[dict, dict]:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return {"type": "http.response.start", "status": status, "headers": headers}, {
        "type": "http.response.body",
        "body": body,
    }


class ApiKeyMiddleware:
    def __init__(self, app, keys: callable) -> None:
        self.app = app
        self.keys = keys  # returns the configured keys (bytes); read per request so settings can change

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        keys = self.keys()
        if keys:
            given = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, token = value.partition(b" ")
                    if scheme.lower() == b"bearer" and token.strip():
                        given = token.strip()
                    break
            if given is None:
                start, body = _reject(401, "missing API key: send 'Authorization: Bearer <key>'")
            elif not any(hmac.compare_digest(given, key) for key in keys):
                start, body = _reject(403, "API key not accepted")
            else:
                start = None
            if start is not None:
                scope["pulse.auth_rejected"] = True
                await send(start)
                await send(body)
                return
        await self.app(scope, receive, send)


def document_bearer_auth(app: FastAPI) -> None:
    """Add the bearer scheme to the OpenAPI document and require it on every `/v1` operation."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from PULSE_API_KEYS, as `Authorization: Bearer <key>`.",
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith(PROTECTED_PREFIX):
                for operation in operations.values():
                    operation["security"] = [{SCHEME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
