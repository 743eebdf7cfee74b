"""Fixtures for the review tests."""

from typing import Any

import pytest

from .support import start


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "large: generates a large store (runs in CI; about a minute)")


@pytest.fixture
async def bot():
    async with start() as b:
        yield b
