"""The objects of this repository for one city's store, and `feast apply` of them.

Here rather than in ``pulse.stores.feature_store``: the repository builds on Pulse's feature contract, so it
sits above ``pulse`` (which never imports ``feature_repo``)."""

from __future__ import annotations

from feature_repo import data_sources, entities, feature_services, feature_views
from pulse.settings import PulseSettings
from pulse.stores.feature_store import open_store


def repository_objects(settings: PulseSettings) -> list:
    """Feast objects of ``feature_repo/`` for the store of ``settings``, built now with its paths."""
    source = data_sources.demand_features_source(settings.feast_offline_dir)
    view = feature_views.cell_service_demand_15min(source)
    return [entities.cell, entities.service_type, source, view, feature_services.demand_forecast_v1(view)]


def apply_repository(settings: PulseSettings) -> list[str]:
    """`feast apply`, programmatically (the CLI costs ~13 s of start-up per call)."""
    store = open_store(settings)
    objects = repository_objects(settings)
    store.apply(objects)
    return [o.name for o in objects]
