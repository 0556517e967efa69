"""Domain rules of ride-hailing demand, without I/O: error metrics, surge, forecast explanations, H3 cells.

Imports nothing from Pulse but ``pulse.settings`` and ``pulse.data.contract``."""
