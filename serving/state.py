"""What the server holds in memory: the Feast store and the champion model, loaded once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from pulse.features import FEATURE_NAMES
from pulse.registry import LoadedModel
from pulse.settings import FEATURE_SERVICE


class FeaturesUnavailable(LookupError):
    """The online store has no features for a cell (never materialised, or expired)."""


@dataclass
class OnlineFeatures:
    """Reads one cell's newest feature row from the Feast online store through the feature service."""

    store: object  # feast.FeatureStore; typed loosely so importing this module does not import Feast

    def __post_init__(self) -> None:
        self.service = self.store.get_feature_service(FEATURE_SERVICE)

    def latest(self, hex_id: str, service_type: int) -> tuple[pd.DataFrame, datetime]:
        response = self.store.get_online_features(
            features=self.service, entity_rows=[{"hex_id": hex_id, "service_type": service_type}]
        ).to_dict(include_event_timestamps=True)
        if response.get("requests", [None])[0] is None:
            raise FeaturesUnavailable(f"no online features for cell {hex_id}, service type {service_type}")
        row = {name: response[name][0] for name in FEATURE_NAMES}
        row.update(hex_id=hex_id, service_type=service_type)
        frame = pd.DataFrame([row]).astype({n: "float64" for n in FEATURE_NAMES}, errors="ignore")
        frame = frame.fillna(value=float("nan"))
        feature_ts = datetime.fromtimestamp(response["requests__ts"][0], tz=UTC)
        return frame, feature_ts


@dataclass
class ServingState:
    features: OnlineFeatures
    model: LoadedModel

    def __post_init__(self) -> None:
        self.cells = frozenset(self.model.forecaster.cells)
