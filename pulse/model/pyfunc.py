"""The MLflow pyfunc face of the forecaster, so any MLflow tool can load and call a registered version.

Every logged model carries this module with the two it imports (``pulse.model.forecaster``,
``pulse.data.contract``) and the empty ``__init__.py`` of their packages as its ``code_paths``, and pins the
packages they need, so a version loads from its artifact alone, where Pulse is not installed. Keep its imports
to those modules: whatever else it imported would have to ship too.

``mlflow.pyfunc.load_model`` puts the model's code folder first on ``sys.path`` of the loading process (and of the
processes it spawns), where the shipped partial ``pulse`` package shadows an installed Pulse. So Pulse's own
processes load versions with ``pulse.lifecycle.registry.load_alias``; ``mlflow.pyfunc.load_model`` is for
environments without Pulse (``mlflow models serve``, a clean venv, another team's code).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.pyfunc import PythonModel

from pulse.model.forecaster import DemandForecaster

# The package as the logged model ships it (paths inside ``pulse/``), and the distributions its import needs
# (pinned at logging time).
CODE_MODULES = (
    "__init__.py",
    "data/__init__.py",
    "data/contract.py",
    "model/__init__.py",
    "model/forecaster.py",
    "model/pyfunc.py",
)
REQUIREMENTS = ("mlflow-skinny", "cloudpickle", "lightgbm", "numpy", "pandas", "scipy")


class ForecastPyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.forecaster = DemandForecaster.load(Path(context.artifacts["forecaster"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.forecaster.predict(model_input)
