"""Fixtures of the chaos test (shares the end-to-end tests' Label Studio)."""

from tests.e2e.conftest import ls_ready

__all__ = ["ls_ready"]
