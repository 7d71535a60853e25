"""The Log Analytics hook: connection fields to settings and credentials, and a real query."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import date, timedelta
from typing import Any, ClassVar

import pytest

# Airflow reads its home when first imported; keep it away from any real deployment.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="spamgeo-hook-"))

import azure.identity
from airflow.sdk import Connection

from spamgeo.credentials import CredentialSettingsError, StaticTokenCredential
from spamgeo.extract import PUBLIC_ENDPOINT, LogAnalyticsClient, SettingsError
from spamgeo.local.standin import DEFAULT_TOKEN, DEFAULT_WORKSPACE_ID, StandIn
from spamgeo.local.synthetic import generate_email_events
from spamgeo.window import Window
from spamgeo_airflow.hooks.log_analytics import (
    LogAnalyticsHook,
    credential_from_connection,
    settings_from_connection,
)

SECRET = "client-secret-that-must-not-leak"
WORKSPACE = "11111111-2222-3333-4444-555555555555"


def connection(conn_id: str = "la_test", **fields: Any) -> Connection:
    extra = fields.pop("extra", None)
    return Connection(
        conn_id=conn_id,
        conn_type="generic",
        extra=json.dumps(extra) if extra is not None else None,
        **fields,
    )


class RecordingCredential:
    """Stands in for an azure-identity class: records how it was built, never calls Entra ID."""

    built: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, **kwargs: Any) -> None:
        RecordingCredential.built.append((self.name, kwargs))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    RecordingCredential.built = []
    for name in ("ClientSecretCredential", "ManagedIdentityCredential", "DefaultAzureCredential"):
        monkeypatch.setattr(
            azure.identity, name, type(name, (RecordingCredential,), {"name": name})
        )
    return RecordingCredential.built


def test_fields_map_to_settings() -> None:
    conn = connection(
        host="127.0.0.1",
        port=8443,
        schema=WORKSPACE,
        extra={"ca_bundle": __file__, "server_timeout_s": "300", "max_retry_after_s": "90"},
    )

    settings = settings_from_connection(conn, slice_length=timedelta(hours=6))

    assert settings.workspace_id == WORKSPACE
    assert settings.endpoint == "https://127.0.0.1:8443"
    assert settings.ca_bundle == __file__
    assert settings.server_timeout_s == 300
    assert settings.max_retry_after_s == 90.0
    assert settings.slice_length == timedelta(hours=6)


def test_defaults_to_the_public_cloud_and_takes_the_workspace_from_extra() -> None:
    settings = settings_from_connection(connection(extra={"workspace_id": WORKSPACE}))

    assert settings.endpoint == PUBLIC_ENDPOINT
    assert settings.workspace_id == WORKSPACE


def test_a_missing_workspace_names_the_connection_and_fields() -> None:
    with pytest.raises(SettingsError) as caught:
        settings_from_connection(connection("la_prod", host="api.loganalytics.io"))

    message = str(caught.value)
    assert "la_prod" in message
    assert "schema" in message
    assert "workspace_id" in message


def test_a_bad_setting_names_the_connection() -> None:
    with pytest.raises(SettingsError, match=r"la_test.*server_timeout_s"):
        settings_from_connection(
            connection(schema=WORKSPACE, extra={"server_timeout_s": "three minutes"})
        )
    with pytest.raises(TypeError, match="slice_size"):
        settings_from_connection(connection(schema=WORKSPACE), slice_size=timedelta(hours=1))


def test_service_principal_from_login_password_and_tenant(
    recorded: list[tuple[str, dict[str, Any]]],
) -> None:
    conn = connection(
        schema=WORKSPACE, login="app-id", password=SECRET, extra={"tenant_id": "tenant-id"}
    )

    credential_from_connection(conn)

    assert recorded == [
        (
            "ClientSecretCredential",
            {"tenant_id": "tenant-id", "client_id": "app-id", "client_secret": SECRET},
        )
    ]


def test_service_principal_without_tenant_names_the_extra(
    recorded: list[tuple[str, dict[str, Any]]],
) -> None:
    conn = connection(schema=WORKSPACE, login="app-id", password=SECRET)

    with pytest.raises(CredentialSettingsError) as caught:
        credential_from_connection(conn)

    assert "la_test" in str(caught.value)
    assert "extra 'tenant_id'" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert recorded == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"login": "mi-client-id", "extra": {"auth": "managed_identity"}},
            ("ManagedIdentityCredential", {"client_id": "mi-client-id"}),
        ),
        ({"extra": {"auth": "managed_identity"}}, ("ManagedIdentityCredential", {})),
        ({}, ("DefaultAzureCredential", {})),
    ],
    ids=["user-assigned-identity", "system-identity", "nothing-set-means-default-chain"],
)
def test_entra_modes(
    recorded: list[tuple[str, dict[str, Any]]], fields: dict[str, Any], expected: tuple
) -> None:
    credential_from_connection(connection(schema=WORKSPACE, **fields))

    assert recorded == [expected]


def test_static_token_from_extra() -> None:
    conn = connection(schema=WORKSPACE, extra={"auth": "static_token", "token": SECRET})

    credential = credential_from_connection(conn)

    assert isinstance(credential, StaticTokenCredential)
    assert credential.get_token("any/.default").token == SECRET


def test_get_client_queries_the_standin_through_an_airflow_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    day = Window.for_days(date(2026, 11, 1))
    events = generate_email_events(500, day, seed=2)
    spam = sum(
        "spam" in (threats or "").lower().split(", ")
        for threats in events["ThreatTypes"].to_pylist()
    )

    with StandIn(events) as server:
        host = server.url.removeprefix("https://")
        monkeypatch.setenv(
            "AIRFLOW_CONN_SPAMGEO_LOG_ANALYTICS",
            json.dumps(
                {
                    "conn_type": "generic",
                    "host": host,
                    "schema": DEFAULT_WORKSPACE_ID,
                    "extra": {
                        "auth": "static_token",
                        "token": DEFAULT_TOKEN,
                        "ca_bundle": str(server.ca_path),
                    },
                }
            ),
        )
        with caplog.at_level(logging.DEBUG):
            client = LogAnalyticsHook().get_client(max_attempts=2)
        with client:
            answer = client.query_window(day)

    assert isinstance(client, LogAnalyticsClient)
    assert client.settings.max_attempts == 2
    assert answer.table.num_rows == spam > 0
    assert DEFAULT_TOKEN not in caplog.text
    assert DEFAULT_TOKEN not in repr(client)
