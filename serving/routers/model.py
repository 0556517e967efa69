"""/v1/model: which champion is served, what it was trained on and how it scored."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException

from pulse.lifecycle.registry import CHAMPION
from pulse.settings import FEATURE_SERVICE, MODEL_NAME
from serving.auth import API_KEY
from serving.deps import StateDep
from serving.routers.forecast import ERRORS
from serving.schemas import BacktestRow, ModelCard, TrainingWindow

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[API_KEY])


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


@router.get("/model", response_model=ModelCard, responses=ERRORS)
async def get_model(state: StateDep) -> ModelCard:
    """Champion version, training window, feature service and held-out backtest figures per horizon: the
    champion the forecasts are being computed with."""
    view = state.view
    model, info = (view.model, view.info) if view is not None else (None, None)
    if model is None or info is None:
        raise HTTPException(503, detail=state.model_error or "no model loaded")
    p, m, f = info.params, info.metrics, model.forecaster
    reasons = info.tags.get("promotion_reasons")
    try:
        reasons = json.loads(reasons) if reasons else []
    except ValueError:
        reasons = [reasons]
    return ModelCard(
        name=MODEL_NAME,
        alias=CHAMPION,
        version=model.version,
        run_id=model.run_id,
        source=info.source,
        loaded_at=info.loaded_at,
        feature_service=p.get("feature_service") or info.tags.get("feature_service") or FEATURE_SERVICE,
        horizons=list(f.horizons),
        service_types=list(f.service_types),
        cells=len(f.served_cells),
        training_window=TrainingWindow(
            start=p.get("window_start"),
            end=p.get("window_end"),
            holdout_start=p.get("holdout_start"),
            train_rows=_int(p.get("train_rows")),
            holdout_rows=_int(p.get("holdout_rows")),
        ),
        backtest=[
            BacktestRow(
                horizon_min=h,
                wape=m.get(f"holdout_wape_{h}"),
                mae=m.get(f"holdout_mae_{h}"),
                coverage_p10_p90=m.get(f"holdout_coverage_p10_p90_{h}"),
                baseline_wape=m.get(f"baseline_wape_{h}"),
                model_wape_same_rows=m.get(f"baseline_model_wape_same_rows_{h}"),
            )
            for h in f.horizons
        ],
        baseline=p.get("baseline"),
        promotion_decision=info.tags.get("promotion_decision"),
        promotion_reasons=[str(r) for r in reasons],
        registry_error=state.registry_error,
    )
