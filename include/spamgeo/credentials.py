"""Credentials for the Log Analytics query API, chosen by one `auth` setting.

Production uses Entra ID (service principal, managed identity or the default chain); the
local stand-in and the tests use a fixed bearer token. Secrets never appear in reprs or logs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azure.core.credentials import AccessToken, AccessTokenInfo

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

AUTH_MODES: tuple[str, ...] = ("service_principal", "managed_identity", "default", "static_token")

# A fixed token never expires on its own; an hour keeps azure-core's refresh logic quiet.
_STATIC_TOKEN_LIFETIME_S = 3600


class CredentialSettingsError(ValueError):
    """A credential setting is missing or unknown; `field` names the setting to fix."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class StaticTokenCredential:
    """A bearer token handed out for any scope: for the local stand-in and tests only."""

    token: str = field(repr=False)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + _STATIC_TOKEN_LIFETIME_S)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self.token, int(time.time()) + _STATIC_TOKEN_LIFETIME_S)

    def close(self) -> None:
        """Nothing to release; present because azure-core closes credentials it owns."""

    def __enter__(self) -> StaticTokenCredential:
        return self

    def __exit__(self, *exc_details: object) -> None:
        self.close()


def _require(auth: str, name: str, value: str | None) -> str:
    if not value:
        raise CredentialSettingsError(f"auth {auth!r} needs {name}, which is not set", name)
    return value


def make_credential(
    auth: str,
    *,
    tenant_id: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    token: str | None = None,
) -> TokenCredential:
    """The credential for one auth mode; a missing piece raises naming that field.

    service_principal needs tenant_id, client_id and client_secret; managed_identity takes an
    optional client_id (user-assigned identity); default uses azure-identity's chain;
    static_token needs token.
    """
    mode = (auth or "").strip().lower()
    if mode == "static_token":
        return StaticTokenCredential(_require(mode, "token", token))

    # azure.identity pulls in msal and friends: import it only when Entra ID is used.
    from azure.identity import (
        ClientSecretCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
    )

    if mode == "service_principal":
        return ClientSecretCredential(
            tenant_id=_require(mode, "tenant_id", tenant_id),
            client_id=_require(mode, "client_id", client_id),
            client_secret=_require(mode, "client_secret", client_secret),
        )
    if mode == "managed_identity":
        if client_id:
            return ManagedIdentityCredential(client_id=client_id)
        return ManagedIdentityCredential()
    if mode == "default":
        if client_id:
            return DefaultAzureCredential(managed_identity_client_id=client_id)
        return DefaultAzureCredential()
    raise CredentialSettingsError(f"auth {auth!r} is not one of {', '.join(AUTH_MODES)}", "auth")
