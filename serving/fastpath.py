"""Repeated `GET /v1/forecast` queries answered before FastAPI routing.

A forecast body only changes when the view does, so once the route has validated a query string and answered
it, the view remembers the body under the raw query string; this pure ASGI middleware (inside metrics)
answers the same query string from that map without routing, query parsing or a Response object. Anything
not in the map (first asks, errors, other routes) goes through FastAPI as usual, so validation and error
answers are FastAPI's. A new view answers the previous view's query strings from its own forecasts.

Auth is a route dependency (:mod:`serving.auth`), which this path never reaches; so it decides like the
router does, before answering: the path is matched with the route's own ``matches`` (the path relative to
``root_path``, so a `Mount` or a proxy's prefix leads here too), and the key is checked with the same
:func:`serving.auth.accepted`. A request it does not answer, a missing or wrong key included, goes on to
FastAPI, where the dependency refuses it with 401 or 403.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.routing import BaseRoute, Match

from serving.auth import accepted
from serving.state import ServingState


class ForecastFastPath:
    def __init__(self, app, get_state: Callable[[], ServingState | None], route: BaseRoute) -> None:
        self.app = app
        self.get_state = get_state
        self.route = route  # the app's `/v1/forecast` route: its path match, and the label metrics use

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            state = self.get_state()
            view = state.view if state is not None else None
            body = view.answers.get(scope["query_string"]) if view is not None else None
            if (
                body is not None
                and self.route.matches(scope)[0] is Match.FULL
                and await accepted(Request(scope, receive))
            ):
                scope["route"] = self.route
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
