"""pytest fixtures for a real Azurite blob server, shared by every test that publishes to blobs.

Wired in tests/conftest.py with `pytest_plugins = ["tests.azurite_fixture"]`. A missing
Azurite fails the tests with the set-up command to run; it is never a reason to skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from azure.storage.blob import ContainerClient

from spamgeo.local.azurite import Azurite, AzuriteError


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite process for the whole session, on a free port and a temporary folder."""
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    try:
        server.start()
    except AzuriteError as exc:
        pytest.fail(f"these tests need Azurite: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def blob_container(azurite: Azurite) -> Iterator[ContainerClient]:
    """A fresh, empty container on the session's Azurite, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    client = ContainerClient.from_connection_string(azurite.connection_string, name)
    client.create_container()
    try:
        yield client
    finally:
        client.delete_container()
