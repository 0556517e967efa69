"""Bulk reads of the Feast online store: every served cell's newest feature row in one call.

The feature service contract stays Feast's (names from :mod:`pulse.data.contract`, values written by Feast
materialisation), but a server does not pay the SDK's ~5 ms per request: a background refresher calls
``get_online_features`` once for all (cell, service type) entities and keeps the result in memory.

Each read opens a fresh ``FeatureStore`` (about 2 ms): a store whose file was deleted or replaced, or whose
server went away, shows up as an error on the next read instead of hiding behind a cached connection. The
server makes the read in its background child process (``serving.background``), one call at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from pulse.data.contract import FEATURE_NAMES
from pulse.settings import FEATURE_SERVICE, PulseSettings


@dataclass(frozen=True)
class FeatureSnapshot:
    """One row per requested entity: ``hex_id``, ``service_type``, the features (float64, NaN = NULL) and
    ``feature_ts`` (UTC, NaT where the store has no row for the entity)."""

    frame: pd.DataFrame
    read_at: datetime

    @property
    def present(self) -> pd.Series:
        return self.frame["feature_ts"].notna() & self.frame["requests"].notna()

    @property
    def newest(self) -> datetime | None:
        ts = self.frame.loc[self.present, "feature_ts"]
        return None if ts.empty else ts.max().to_pydatetime()


def read_online_features(settings: PulseSettings, entities: list[tuple[str, int]]) -> FeatureSnapshot:
    """One ``get_online_features`` call for all ``entities``; raises whatever the store raises."""
    from pulse.stores.feature_store import open_store

    store = open_store(settings)
    rows = [{"hex_id": h, "service_type": int(s)} for h, s in entities]
    if rows:
        service = store.get_feature_service(FEATURE_SERVICE)
        data = store.get_online_features(features=service, entity_rows=rows).to_dict(include_event_timestamps=True)
    else:
        data = {}
    return FeatureSnapshot(frame=to_frame(entities, data), read_at=datetime.now(UTC))


def to_frame(entities: list[tuple[str, int]], data: dict[str, list]) -> pd.DataFrame:
    """The response of ``get_online_features(...).to_dict(include_event_timestamps=True)`` as a frame."""
    n = len(entities)
    frame = pd.DataFrame(
        {"hex_id": [h for h, _ in entities], "service_type": np.array([s for _, s in entities], dtype="int64")}
    )
    for name in FEATURE_NAMES:
        frame[name] = pd.to_numeric(pd.Series(data.get(name, [None] * n), dtype="object"), errors="coerce").astype(
            "float64"
        )
    ts = pd.to_numeric(pd.Series(data.get("requests__ts", [None] * n), dtype="object"), errors="coerce")
    ts = ts.where(ts > 0)  # Feast reports 0 for an entity it has no row for
    frame["feature_ts"] = pd.to_datetime(ts, unit="s", utc=True)
    return frame
