"""Alerts on the quality city (tests/conftest.py, shared with test_automation and test_faults): a faulty day
landed and loaded through the landing sensor by the real pipeline tells one person once."""

import pytest
from test_alerts import Receiver


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_faulty_day_loaded_by_the_pipeline_sends_one_alert(quality, receiver, monkeypatch):
    from test_faults import FAULT_DAY, swap_coordinates

    city = quality
    monkeypatch.setenv("PULSE_ALERTS__WEBHOOK_URL", receiver.url)
    city.tick("landing_sensor")  # whatever earlier tests left
    city.tick("alert_on_run_failure")
    city.tick("pulse_alerts")  # alerts start from now
    day = city.land(FAULT_DAY, ride_requests=swap_coordinates)
    tick = city.tick("landing_sensor")
    result = city.launch(tick.run_requests[0])
    assert not result.success
    city.tick("alert_on_run_failure")
    city.tick("pulse_alerts")
    # one alert, the check's: the ingest_day run it failed is named in it, not told again
    assert len(receiver.messages) == 1, receiver.texts()
    text = receiver.messages[0]["text"]
    assert f"Blocking check failed: raw/ride_requests:great_expectations, day {day}" in text
    assert f"/runs/{result.run_id}" in text and "pickup_lat" in text
    assert "/assets/raw/ride_requests?view=checks&checkDetail=great_expectations" in text
    city.tick("alert_on_run_failure")
    city.tick("pulse_alerts")
    assert len(receiver.messages) == 1
