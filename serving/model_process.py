"""The model's forecasts of a new feature snapshot, made in the server's background process for the table.

Every bucket the server forecasts every served cell with the model's TreeSHAP explanations: seconds of one
core (LightGBM's ``pred_contrib``), on a machine whose other core answers requests. In a child process at a
lower priority (:mod:`serving.background`) that work never takes the core or the GIL from a request; the
server receives the finished forecasts.

The child keeps the last forecaster it was sent, by version and training run (the child serves every app in
the process, and two cities each have a version 1), so the model crosses the pipe once per version, and again
after the child was restarted (:class:`ModelNotLoaded` asks for it).
"""

from __future__ import annotations

import pandas as pd

from pulse.forecasts.forecast_table import CellForecast, model_forecasts
from pulse.lifecycle.registry import LoadedModel
from pulse.model.forecaster import DemandForecaster
from serving import background

PURPOSE = "table"
TIMEOUT_SECONDS = 300.0  # a large city's explanations take tens of seconds of a busy core
_loaded: dict[str, DemandForecaster] = {}


class ModelNotLoaded(RuntimeError):
    """The child does not hold this version (it started after the version was sent)."""


def _forecast(
    key: str, forecaster: DemandForecaster | None, fresh: pd.DataFrame, horizons: list[int], elasticity: float
) -> dict[tuple[str, int], CellForecast]:
    """In the child: the forecasts of ``fresh`` by the model ``key``, which is ``forecaster`` when it is sent."""
    if forecaster is not None:
        _loaded.clear()
        _loaded[key] = forecaster
    held = _loaded.get(key)
    if held is None:
        raise ModelNotLoaded(key)
    return model_forecasts(held, fresh, horizons, elasticity)


def predictor(model: LoadedModel):
    """``build_table``'s ``predict`` for ``model``, run in the background process."""

    key = f"v{model.version} of run {model.run_id}"

    def predict(fresh: pd.DataFrame, horizons: list[int], elasticity: float) -> dict[tuple[str, int], CellForecast]:
        args = (fresh, horizons, elasticity)
        try:
            return background.call(PURPOSE, _forecast, key, None, *args, timeout=TIMEOUT_SECONDS)
        except background.BackgroundError as err:
            if err.kind != ModelNotLoaded.__name__:
                raise
        return background.call(PURPOSE, _forecast, key, model.forecaster, *args, timeout=TIMEOUT_SECONDS)

    return predict
