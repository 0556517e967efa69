"""What routes read from the app: the current view, the serving state and the settings.

Plain functions of the request rather than FastAPI dependencies on the hot routes: each dependency costs
tens of microseconds per request, more than the lookups the routes do (see README "Serving").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from pulse.settings import PulseSettings
from serving.state import ServingState, View


def view_of(request: Request) -> View:
    state = request.app.state.serving
    view = state.view if state is not None else None
    if view is None:
        raise HTTPException(503, detail=request.app.state.load_error or "no forecasts loaded yet")
    return view


def settings_of(request: Request) -> PulseSettings:
    return request.app.state.settings


async def get_serving(request: Request) -> ServingState:
    state = request.app.state.serving
    if state is None:
        raise HTTPException(503, detail=request.app.state.load_error or "the server is starting")
    return state


StateDep = Annotated[ServingState, Depends(get_serving)]
