"""Credential choice for the query API: each auth mode, its required fields, no leaked secrets."""

from __future__ import annotations

import time

import pytest
from azure.identity import (
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

from spamgeo.credentials import (
    AUTH_MODES,
    CredentialSettingsError,
    StaticTokenCredential,
    make_credential,
)

SECRET = "s3cr3t-value-that-must-not-leak"


def test_static_token_serves_any_scope_and_hides_the_token() -> None:
    credential = make_credential("static_token", token=SECRET)

    assert isinstance(credential, StaticTokenCredential)
    for scope in ("https://api.loganalytics.io/.default", "https://127.0.0.1:8443/.default"):
        assert credential.get_token(scope).token == SECRET
        info = credential.get_token_info(scope)
        assert info.token == SECRET
        assert info.expires_on > time.time()
    assert SECRET not in repr(credential)


def test_service_principal_builds_a_client_secret_credential() -> None:
    credential = make_credential(
        "service_principal",
        tenant_id="00000000-0000-0000-0000-000000000001",
        client_id="00000000-0000-0000-0000-000000000002",
        client_secret=SECRET,
    )

    assert isinstance(credential, ClientSecretCredential)
    assert SECRET not in repr(credential)


@pytest.mark.parametrize("missing", ["tenant_id", "client_id", "client_secret"])
def test_service_principal_names_the_missing_field(missing: str) -> None:
    pieces = {"tenant_id": "tenant", "client_id": "client", "client_secret": SECRET}
    pieces[missing] = ""

    with pytest.raises(CredentialSettingsError, match=missing) as caught:
        make_credential("service_principal", **pieces)

    assert caught.value.field == missing
    assert SECRET not in str(caught.value)


def test_static_token_without_a_token_names_the_field() -> None:
    with pytest.raises(CredentialSettingsError, match="token") as caught:
        make_credential("static_token")
    assert caught.value.field == "token"


@pytest.mark.parametrize("client_id", [None, "00000000-0000-0000-0000-000000000003"])
def test_managed_identity_takes_an_optional_client_id(client_id: str | None) -> None:
    assert isinstance(
        make_credential("managed_identity", client_id=client_id), ManagedIdentityCredential
    )


def test_default_chain() -> None:
    assert isinstance(make_credential("Default"), DefaultAzureCredential)


def test_unknown_auth_lists_the_choices() -> None:
    with pytest.raises(CredentialSettingsError) as caught:
        make_credential("password")
    assert caught.value.field == "auth"
    assert all(mode in str(caught.value) for mode in AUTH_MODES)
