"""Data handling: the feature ``contract``, landing-zone ``ingest``, trip-log import (``trips``), the city
``simulator``.

``contract`` is the bottom layer every other module may import; it imports nothing from Pulse. A logged model
ships it as code: keep this file empty."""
