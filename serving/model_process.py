"""The model's forecasts of a new feature snapshot, made in the server's background process for the table.

Every bucket the server forecasts every served cell with the model's TreeSHAP explanations: seconds of one
core (LightGBM's ``pred_contrib``), on a machine whose other core answers requests. In a child process at a
lower priority (:mod:`serving.background`) that work never takes the core or the GIL from a request; the
server receives the finished forecasts.

They come back as pickles of a few hundred cells each, unpickled one by one: a large city's table is tens of
thousands of objects, and one ``pickle.loads`` of all of them held the GIL for 20 ms, a stall of every request
behind it; between two slices the event loop runs.

The child keeps the last forecaster it was sent, by version and training run (the child serves every app in
the process, and two cities each have a version 1), so the model crosses the pipe once per version, and again
after the child was restarted (:class:`ModelNotLoaded` asks for it).
"""

from __future__ import annotations

import pickle

import pandas as pd

from pulse.forecasts.forecast_table import CellForecast, model_forecasts
from pulse.lifecycle.registry import LoadedModel
from pulse.model.adaptive import Levels
from pulse.model.forecaster import DemandForecaster
from serving import background

PURPOSE = "table"
TIMEOUT_SECONDS = 300.0  # a large city's explanations take tens of seconds of a busy core
SLICE_CELLS = 200  # cells per pickle sent back: ~2 ms of unpickling each
_loaded: dict[str, DemandForecaster] = {}


class ModelNotLoaded(RuntimeError):
    """The child does not hold this version (it started after the version was sent)."""


def _forecast(
    key: str,
    forecaster: DemandForecaster | None,
    fresh: pd.DataFrame,
    horizons: list[int],
    elasticity: float,
    levels: Levels | None,
    slice_cells: int,
) -> list[bytes]:
    """In the child: the forecasts of ``fresh`` by the model ``key``, which is ``forecaster`` when it is sent,
    as pickled slices of ``slice_cells`` cells."""
    if forecaster is not None:
        _loaded.clear()
        _loaded[key] = forecaster
    held = _loaded.get(key)
    if held is None:
        raise ModelNotLoaded(key)
    items = list(model_forecasts(held, fresh, horizons, elasticity, levels).items())
    return [
        pickle.dumps(dict(items[i : i + slice_cells]), pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(items), slice_cells)
    ]


def predictor(model: LoadedModel):
    """``build_table``'s ``predict`` for ``model``, run in the background process."""

    key = f"v{model.version} of run {model.run_id}"

    def predict(
        fresh: pd.DataFrame, horizons: list[int], elasticity: float, levels: Levels | None = None
    ) -> dict[tuple[str, int], CellForecast]:
        args = (fresh, horizons, elasticity, levels, SLICE_CELLS)
        try:
            slices = background.call(PURPOSE, _forecast, key, None, *args, timeout=TIMEOUT_SECONDS)
        except background.BackgroundError as err:
            if err.kind != ModelNotLoaded.__name__:
                raise
            slices = background.call(PURPOSE, _forecast, key, model.forecaster, *args, timeout=TIMEOUT_SECONDS)
        out: dict[tuple[str, int], CellForecast] = {}
        for part in slices:  # one slice at a time: requests run between them
            out.update(pickle.loads(part))
        return out

    return predict
