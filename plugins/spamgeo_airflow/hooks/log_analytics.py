"""Airflow hook for the Log Analytics query API: turns a connection into a spamgeo client.

All query, retry and slicing logic lives in `spamgeo.extract`; this module only maps
connection fields to settings and a credential.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from spamgeo.extract import LogAnalyticsClient, LogAnalyticsSettings

# Where each credential setting lives in the connection, for error messages.
_FIELD_IN_CONNECTION = {
    "auth": "extra 'auth'",
    "tenant_id": "extra 'tenant_id'",
    "client_id": "login",
    "client_secret": "password",
    "token": "extra 'token'",
}


def _endpoint(conn: Any) -> str | None:
    host = (conn.host or "").strip()
    if not host:
        return None
    if "://" not in host:
        host = f"https://{host}"
    return f"{host.rstrip('/')}:{conn.port}" if conn.port else host


# Connection extras read as numbers: (name, type, what the value must be).
_NUMERIC_EXTRAS = (
    ("server_timeout_s", int, "a whole number of seconds"),
    ("max_retry_after_s", float, "a number of seconds"),
)


def settings_from_connection(conn: Any, **overrides: Any) -> LogAnalyticsSettings:
    """Settings from a connection's fields; keyword overrides win (e.g. slice_length)."""
    from spamgeo.extract import LogAnalyticsSettings, SettingsError

    known = {item.name for item in fields(LogAnalyticsSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"unknown Log Analytics setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )

    extra = conn.extra_dejson
    workspace_id = str(extra.get("workspace_id") or conn.schema or "").strip()
    if not workspace_id:
        raise SettingsError(
            f"connection {conn.conn_id!r} has no workspace id: set its schema field "
            "or extra 'workspace_id' to the Log Analytics workspace ID"
        )
    values: dict[str, Any] = {"workspace_id": workspace_id}
    endpoint = _endpoint(conn)
    if endpoint:
        values["endpoint"] = endpoint
    if extra.get("ca_bundle"):
        values["ca_bundle"] = str(extra["ca_bundle"])
    for name, kind, what in _NUMERIC_EXTRAS:
        if extra.get(name) in (None, ""):
            continue
        try:
            values[name] = kind(extra[name])
        except (TypeError, ValueError) as exc:
            raise SettingsError(
                f"connection {conn.conn_id!r}: extra {name!r} {extra[name]!r} is not {what}"
            ) from exc
    values.update(overrides)

    try:
        return LogAnalyticsSettings(**values)
    except SettingsError as exc:
        raise SettingsError(f"connection {conn.conn_id!r}: {exc}") from exc


def auth_mode(conn: Any) -> str:
    """The connection's auth mode: extra 'auth', else inferred from which fields are set."""
    extra = conn.extra_dejson
    if extra.get("auth"):
        return str(extra["auth"]).strip().lower()
    if conn.login and conn.password:
        return "service_principal"
    if extra.get("token"):
        return "static_token"
    return "default"


def credential_from_connection(conn: Any) -> TokenCredential:
    """The credential the connection describes; a missing field is named as it is in Airflow."""
    from spamgeo.credentials import CredentialSettingsError, make_credential

    extra = conn.extra_dejson
    auth = auth_mode(conn)
    try:
        return make_credential(
            auth,
            tenant_id=extra.get("tenant_id"),
            client_id=conn.login or extra.get("client_id"),
            client_secret=conn.password,
            token=extra.get("token"),
        )
    except CredentialSettingsError as exc:
        where = _FIELD_IN_CONNECTION.get(exc.field, exc.field)
        raise CredentialSettingsError(
            f"connection {conn.conn_id!r}: {exc}; set the connection's {where}", exc.field
        ) from exc


class LogAnalyticsHook(BaseHook):
    """The Log Analytics query API behind an Airflow connection.

    Connection fields: host = endpoint (default public cloud), schema or extra 'workspace_id'
    = workspace ID, login = client ID, password = client secret; extras: auth
    (service_principal | managed_identity | default | static_token), tenant_id, ca_bundle,
    token (static_token only), server_timeout_s.
    """

    conn_name_attr = "log_analytics_conn_id"
    default_conn_name = "spamgeo_log_analytics"
    conn_type = "generic"
    hook_name = "Log Analytics query API (spamgeo)"

    def __init__(self, log_analytics_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_analytics_conn_id = log_analytics_conn_id

    def get_settings(self, **overrides: Any) -> LogAnalyticsSettings:
        """The settings from the connection, with keyword overrides applied."""
        return settings_from_connection(
            self.get_connection(self.log_analytics_conn_id), **overrides
        )

    def get_client(self, **overrides: Any) -> LogAnalyticsClient:
        """A client for the connection's workspace; close it (or use `with`) when done."""
        from spamgeo.extract import LogAnalyticsClient

        conn = self.get_connection(self.log_analytics_conn_id)
        settings = settings_from_connection(conn, **overrides)
        credential = credential_from_connection(conn)
        self.log.info(
            "Log Analytics workspace %s at %s, auth %s, connection %s",
            settings.workspace_id,
            settings.endpoint,
            auth_mode(conn),
            self.log_analytics_conn_id,
        )
        return LogAnalyticsClient(settings, credential)

    def get_conn(self) -> LogAnalyticsClient:
        return self.get_client()
