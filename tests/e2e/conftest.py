"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.e2e import labelstudio


@pytest.fixture(scope="session")
def ls_ready() -> None:
    """Label Studio installed and a migrated data directory built (both cached across runs)."""
    labelstudio.migrated_template()
