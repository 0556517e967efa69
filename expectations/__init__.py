"""Great Expectations suites (``suites/*.json``, GX Core 1.x) and the code that runs them.

``runner`` validates a DataFrame against a suite with runtime suite parameters; ``checks`` builds each suite's
batch and parameters from the warehouse or a training run. ``pulse_assets/quality.py`` runs them as blocking
Dagster asset checks.
"""
