"""Feature services, versioned per model: a new model contract gets a new service, old ones stay."""

from feast import FeatureService

from feature_repo.feature_views import cell_service_demand_15min
from pulse.settings import FEATURE_SERVICE

demand_forecast_v1 = FeatureService(
    name=FEATURE_SERVICE,
    features=[cell_service_demand_15min],
    description="Every feature the pulse-demand-forecast LightGBM models read.",
    tags={"model": "pulse-demand-forecast"},
)
