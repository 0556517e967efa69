"""Server addresses that carry passwords are secrets: masked wherever settings or their errors are shown (repr,
str, model_dump, logs, exception messages, Dagster's resources and run logs), and the real value reaches the
connection: real ClickHouse and MLflow clients send it to a loopback server that records what arrives."""

from __future__ import annotations

import base64
import http.server
import logging
import socketserver
import threading
from collections.abc import Iterator

import pytest

from pulse.settings import PulseSettings

SECRET = "s3cret"
SERVERS = {
    "clickhouse_dsn": "http://user:s3cret@host:8123/db",
    "redis_url": "redis://:s3cret@host:6379",
    "mlflow_tracking_uri": "http://u:s3cret@mlflow:5000",
}
ENV = {f"PULSE_SERVERS__{name.upper()}": value for name, value in SERVERS.items()}


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("PULSE_HOME", str(tmp_path))
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def shown(settings: PulseSettings) -> str:
    return " ".join(
        [repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json(), f"{settings}"]
    )


@pytest.mark.parametrize("given", ["arguments", "environment"])
def test_server_passwords_are_masked_in_settings_and_logs(isolated, monkeypatch, caplog, given):
    if given == "environment":
        for var, value in ENV.items():
            monkeypatch.setenv(var, value)
        settings = PulseSettings()
    else:
        settings = PulseSettings(home=isolated, servers=SERVERS)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("pulse.test").info("settings: %s / %r", settings, settings)
    error = RuntimeError(f"could not connect with {settings}")
    assert SECRET not in shown(settings) + caplog.text + str(error) + repr(error)
    # The connection code gets the real values.
    assert settings.fact_store_dsn == SERVERS["clickhouse_dsn"]
    assert settings.tracking_uri == SERVERS["mlflow_tracking_uri"]
    assert settings.servers.redis_url.get_secret_value() == SERVERS["redis_url"]


def test_redact_masks_passwords_in_error_messages_and_keeps_the_server(isolated):
    settings = PulseSettings(home=isolated, serving={"api_keys": "key-1,key-2"}, servers=SERVERS)
    message = (
        "API request to http://u:s3cret@mlflow:5000/api/2.0/x failed; redis://:s3cret@host:6379 refused; "
        "dsn http://user:s3cret@host:8123/db; key key-2"
    )
    redacted = settings.redact(message)
    assert SECRET not in redacted and "key-2" not in redacted
    assert "http://u:***@mlflow:5000/api/2.0/x" in redacted and "http://user:***@host:8123/db" in redacted
    assert PulseSettings(home=isolated).redact(message) == message  # nothing configured, nothing to mask


@pytest.fixture
def recorder() -> Iterator[tuple[int, list[dict]]]:
    """A loopback HTTP server that records the headers of every request and answers 500."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.server_address[1], seen
        server.shutdown()


def basic_passwords(seen: list[dict]) -> set[str]:
    return {
        base64.b64decode(h["Authorization"].removeprefix("Basic ")).decode().partition(":")[2]
        for h in seen
        if h.get("Authorization", "").startswith("Basic ")
    }


def test_connections_receive_the_real_passwords(isolated, recorder, monkeypatch):
    from pulse.lifecycle import registry
    from pulse.stores import fact_store
    from pulse.stores.feature_store import open_store

    port, seen = recorder
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = PulseSettings(
        home=isolated,
        servers={
            "clickhouse_dsn": f"http://user:s3cret@127.0.0.1:{port}/db",
            "mlflow_tracking_uri": f"http://u:s3cret@127.0.0.1:{port}",
            "redis_url": "127.0.0.1:6379,password=s3cret",
        },
    )
    with pytest.raises(Exception, match="500"), fact_store.connect(settings):
        pass
    assert basic_passwords(seen) == {SECRET}
    seen.clear()
    with pytest.raises(Exception) as failed:
        registry.client(settings).get_model_version_by_alias("pulse-demand-forecast", "champion")
    assert basic_passwords(seen) == {SECRET}
    assert SECRET in str(failed.value), "MLflow quotes the URI it was given: what settings.redact is for"
    monkeypatch.delenv("FEAST_REDIS_CONNECTION", raising=False)
    open_store(settings)  # Feast reads the Redis connection from here (feature_store.production.yaml)
    import os

    assert os.environ["FEAST_REDIS_CONNECTION"] == "127.0.0.1:6379,password=s3cret"


def test_dagster_resources_and_run_logs_never_show_server_passwords(isolated, monkeypatch):
    import dagster as dg

    from pulse_assets.resources import resources_for

    for var, value in ENV.items():
        monkeypatch.setenv(var, value)
    resources = resources_for(PulseSettings())
    pulse = resources["pulse"]

    @dg.asset(required_resource_keys={"pulse"})
    def shows_its_resource(context) -> None:
        pulse = context.resources.pulse
        settings = pulse.settings()
        context.log.info(f"resource {pulse!r}, settings {settings!r} {settings}")
        assert settings.fact_store_dsn == SERVERS["clickhouse_dsn"]  # the run still connects with the real one
        assert settings.tracking_uri == SERVERS["mlflow_tracking_uri"]

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([shows_its_resource], resources={"pulse": pulse}, instance=instance)
    assert result.success
    logged = " ".join(f"{e.user_message} {e.dagster_event}" for e in instance.all_logs(result.run_id))
    assert "resource PulseResource(" in logged
    assert SECRET not in logged + repr(pulse) + str(pulse.model_dump())
