"""Feature services, versioned per model: a new model contract gets a new service, old ones stay."""

from feast import FeatureService, FeatureView

from pulse.settings import FEATURE_SERVICE


def demand_forecast_v1(view: FeatureView) -> FeatureService:
    return FeatureService(
        name=FEATURE_SERVICE,
        features=[view],
        description="Every feature the pulse-demand-forecast LightGBM models read.",
        tags={"model": "pulse-demand-forecast"},
    )
