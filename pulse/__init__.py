"""Pulse's core: demand forecasting for a ride-hailing city, free of Dagster, FastAPI and Feast's repository.

Subpackages by concern, each importing only those below it (``tests/test_imports.py`` checks it):

* ``pulse.settings``: the settings object and the project constants (top level: everything reads it);
* ``pulse.data.contract``: the feature contract (names, the 15-minute grain) every layer agrees on;
* ``pulse.domain``: domain rules with no I/O: metrics, surge, explanations, H3 cells;
* ``pulse.model``: the forecasting model itself: the forecaster, baselines, climatology, its MLflow pyfunc;
* ``pulse.data``: data handling: landing-zone ingest, trip-log import, the city simulator;
* ``pulse.stores``: the stores: DuckDB warehouse, Feast feature store, ClickHouse fact store;
* ``pulse.lifecycle``: the model's lifecycle: training, backtests, drift, promotion, the MLflow registry;
* ``pulse.forecasts``: the served forecast table and the repositioning moves built on it.

Package ``__init__`` modules import nothing: a logged MLflow model ships a partial ``pulse`` package (see
``pulse.model.pyfunc``), and importing one module never drags in a whole subpackage.
"""
