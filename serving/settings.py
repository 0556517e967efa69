"""Settings as a FastAPI dependency, so tests can hand the app another city's settings."""

from typing import Annotated

from fastapi import Depends, Request

from pulse.settings import PulseSettings


def get_settings(request: Request) -> PulseSettings:
    return request.app.state.settings


SettingsDep = Annotated[PulseSettings, Depends(get_settings)]
