"""Dependencies that hand routes what the lifespan loaded."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from serving.state import ServingState


def get_state(request: Request) -> ServingState:
    state = getattr(request.app.state, "serving", None)
    if state is None:
        raise HTTPException(503, detail=request.app.state.load_error or "model and features are not loaded")
    return state


StateDep = Annotated[ServingState, Depends(get_state)]
