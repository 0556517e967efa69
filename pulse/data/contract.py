"""The model's feature contract: the columns of dbt's ``fct_demand_features_15min`` that Feast serves.

One list, read by the Feast feature view, the trainer and the server, so the three cannot disagree.
A row's ``feature_ts`` (bucket end) is the forecast origin: every value in it is known at that instant.
The calendar columns (hour_of_day, minute_of_day, day_of_week, is_weekend, is_holiday) are on the city's clock,
like the local_* ones.
"""

from __future__ import annotations

BUCKET_MINUTES = 15  # the grain of every fact and feature row
AHEAD_BUCKETS = range(1, 7)  # targets up to 90 minutes = 6 buckets after the origin

# (name, kind) with kind "int" for counts and "float" otherwise; NULL-able where a city lacks the signal.
FEATURES: list[tuple[str, str]] = [
    ("requests", "int"),
    ("requests_lag_1", "int"),
    ("requests_lag_2", "int"),
    ("requests_lag_3", "int"),
    ("requests_sum_1h", "int"),
    ("requests_sum_3h", "int"),
    ("requests_sum_24h", "int"),
    *[(f"requests_last_week_ahead_{k}", "int") for k in AHEAD_BUCKETS],
    *[(f"tow_mean_4w_ahead_{k}", "float") for k in AHEAD_BUCKETS],
    *[(f"tow_smooth_4w_ahead_{k}", "float") for k in AHEAD_BUCKETS],
    *[(f"tod_smooth_7d_ahead_{k}", "float") for k in AHEAD_BUCKETS],
    ("neighbour_requests_1h", "int"),
    ("neighbour2_requests_1h", "int"),
    ("hour_of_day", "int"),
    ("minute_of_day", "int"),
    ("day_of_week", "int"),
    ("is_weekend", "int"),
    ("is_holiday", "int"),
    ("local_minute_of_day", "int"),
    ("local_day_of_week", "int"),
    ("temperature_c", "float"),
    ("precipitation_mm", "float"),
    ("event_attendance_ending_1h", "int"),
    ("event_attendance_live", "int"),
    ("idle_drivers", "int"),
    ("busy_drivers", "int"),
    ("price_conversion", "float"),
    ("acceptance_rate", "float"),
    ("mean_quoted_surge", "float"),
]
FEATURE_NAMES: list[str] = [name for name, _ in FEATURES]
ENTITY_KEYS = ("hex_id", "service_type")
TIMESTAMP_FIELD = "feature_ts"
FEATURE_VIEW = "cell_service_demand_15min"
