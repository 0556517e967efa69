"""The forecasting model: ``forecaster`` (LightGBM means, negative-binomial intervals), the ``baselines`` it is
compared with, the time-of-week ``climatology`` fallback, single-cell ``forecasting`` and the MLflow ``pyfunc``.

A logged model ships ``pyfunc``, ``forecaster`` and ``pulse.data.contract`` as its code: keep this file empty."""
