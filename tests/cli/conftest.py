"""Fixtures of the CLI tests: the shared ones (photos, videos, the trained bundle) are in tests/conftest.py."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread(one_torch_thread):
    """``adsrt restore`` runs in-process with one torch thread, as it did in tests/runtime (tests/conftest.py)."""
