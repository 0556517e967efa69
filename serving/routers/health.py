"""/health (process up), /ready (model and fresh features loaded) and /metrics (Prometheus): open to all."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    """Always 200 while the process runs; `status` says whether anything could be loaded."""
    state = getattr(request.app.state, "serving", None)
    view = state.view if state is not None else None
    if view is None:
        return Health(status="degraded", detail=getattr(request.app.state, "load_error", None) or "starting")
    return Health(status="ok", model_version=view.model_version)


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready, "description": "Not ready; see reasons."}})
async def ready(request: Request) -> JSONResponse:
    """200 when a model is loaded and the online store was read and is fresh; 503 with the reasons otherwise."""
    state = getattr(request.app.state, "serving", None)
    if state is None:
        reason = getattr(request.app.state, "load_error", None) or "starting"
        body = Ready(
            ready=False,
            model_version=None,
            model_source=None,
            reference=None,
            feature_read_at=None,
            cells=0,
            degraded_cells=0,
            reasons=[reason],
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    view = state.view  # before readiness: the reasons may describe a newer view, never an older one
    ok, reasons = state.readiness()
    body = Ready(
        ready=ok,
        model_version=view.model_version if view else None,
        model_source=view.info.source if view and view.info else None,
        reference=view.table.reference if view else None,
        feature_read_at=state.feature_read_at,
        cells=len(view.table.cells) if view else 0,
        degraded_cells=view.table.degraded if view else 0,
        reasons=reasons,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus exposition: request counts and latency per route, feature age, model version, degraded cells."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
