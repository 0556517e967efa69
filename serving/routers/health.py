"""/health (process up), /ready (model and fresh features loaded) and /metrics (Prometheus): open to all."""

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving import schemas
from serving.live import last_bucket_update
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
    now = request.app.state.clock()
    update = bucket_update(request)
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
            now=now,
            newest_feature_ts=None,
            feature_lag_seconds=None,
            bucket_update=update,
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    view = state.view  # before readiness: the reasons may describe a newer view, never an older one
    newest = view.features.newest if view is not None and view.features is not None else None
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
        now=now,
        newest_feature_ts=newest,
        feature_lag_seconds=None if newest is None else (now - newest).total_seconds(),
        bucket_update=update,
        decisions=decisions_out(state),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)


def decisions_out(state) -> dict[str, schemas.DecisionsOut]:
    if state.decisions is None:
        return {}

    def wall(t: float | None) -> datetime | None:
        return None if t is None else datetime.fromtimestamp(t, UTC)

    return {
        target: schemas.DecisionsOut(
            target=target,
            destination=s.destination,
            state=s.state,
            published_bucket=s.published_bucket,
            published_at=wall(s.published_at),
            pending_bucket=s.pending_bucket,
            last_error=s.last_error,
            failing_since=wall(s.failing_since),
            failures=s.failures,
            published=s.published,
            superseded=s.superseded,
            expired=s.expired,
            items=s.items,
        )
        for target, s in state.decisions.statuses().items()
    }


def bucket_update(request: Request) -> schemas.BucketUpdate | None:
    update = last_bucket_update(request.app.state.settings)
    if update is None:
        return None
    return schemas.BucketUpdate(
        bucket_end=update.bucket_end,
        window_start=update.window_start,
        published=update.published,
        error=update.error,
        published_at=update.published_at,
        latency_seconds=update.latency_seconds,
        stages=update.stages,
        late_rows=update.late_rows,
        quarantined_rows=update.quarantined_rows,
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus exposition: request counts and latency per route, feature lag, model version, degraded cells,
    the last bucket update's stages and latency."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
