"""The model's lifecycle: ``training`` a candidate, scoring it (``rows``, ``evaluation``, ``backtest``),
``drift``, ``promotion``, the MLflow ``registry`` and the ``champion`` a server loads.

Dependencies run one way: backtest → training → evaluation → rows."""
