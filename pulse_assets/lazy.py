"""Modules the code location needs only when an asset runs, loaded on first use.

Importing the code location is the first thing every Dagster run worker does. MLflow, LightGBM and SciPy
(behind `pulse.lifecycle`: `backtest`, `evaluation`, `registry`, `training`, `promotion`) take about 4 s of
that and serve only the training, promotion, backtest and drift assets; an ingest-to-features partition run
never touches them. Feast (behind `feature_repo.repository`) loads when the feature assets first need it.
``lazy_module`` is the standard-library recipe (`importlib.util.LazyLoader`): the module object exists at
once, its code runs on the first attribute access.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(importlib.import_module(parent), child, module)
    return module
