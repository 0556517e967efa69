"""Settings as a FastAPI dependency, so tests can hand the app another city's settings."""

from typing import Annotated

from fastapi import Depends, Request

from pulse.settings import PulseSettings


async def get_settings(request: Request) -> PulseSettings:
    # async: FastAPI runs plain-def dependencies in a thread pool, a thread hop per request.
    return request.app.state.settings


SettingsDep = Annotated[PulseSettings, Depends(get_settings)]
