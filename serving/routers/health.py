"""/health: is the process up, and what is loaded."""

from fastapi import APIRouter, Request

from serving.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    state = getattr(request.app.state, "serving", None)
    if state is None:
        return Health(status="degraded", detail=request.app.state.load_error)
    return Health(status="ok", model_version=state.model.version)
