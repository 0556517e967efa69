"""What serving answers: the precomputed ``forecast_table`` of every active cell and the ``repositioning``
moves built on it."""
