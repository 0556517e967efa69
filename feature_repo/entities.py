"""Feast entities: a forecast is keyed by the H3 cell and the service type."""

from feast import Entity, ValueType

cell = Entity(
    name="cell",
    join_keys=["hex_id"],
    value_type=ValueType.STRING,
    description="H3 cell (hexagon) at the city's configured resolution.",
)

service_type = Entity(
    name="service_type",
    join_keys=["service_type"],
    value_type=ValueType.INT64,
    description="Ride product, e.g. 1 = standard, 2 = XL.",
)
