"""Pulse's core: demand forecasting for a ride-hailing city, free of Dagster, FastAPI and Feast's repository.

Rooms by concern, lowest first; each imports only its own room and those listed before it, never one after
(``tests/test_imports.py`` checks it, and that no two modules or rooms import each other):

* ``pulse.data.contract``: the feature contract (names, the 15-minute grain) every layer agrees on;
* ``pulse.settings``: the settings object, grouped by concern, and the project constants;
* ``pulse.domain``: domain rules with no I/O: metrics, surge, explanations, H3 cells;
* ``pulse.model``: the forecasting model itself: the forecaster, baselines, climatology, its MLflow pyfunc;
* ``pulse.data``: data handling: landing-zone ingest, trip-log import, the city simulator; and, beside it,
  ``pulse.stores``: the stores: DuckDB warehouse, Feast feature store, ClickHouse fact store;
* ``pulse.lifecycle``: the model's lifecycle: training, backtests, drift, promotion, the MLflow registry;
* ``pulse.forecasts``: the served forecast table and the repositioning moves built on it.

Package ``__init__`` modules import nothing: a logged MLflow model ships a partial ``pulse`` package (see
``pulse.model.pyfunc``), and importing one module never drags in a whole subpackage.
"""
