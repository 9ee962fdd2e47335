"""Fixtures of the io tests: the shared ones (videos, fake cameras) are in tests/conftest.py."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread(one_torch_thread):
    """The io tests run with one torch thread, as they did in tests/runtime (tests/conftest.py)."""
