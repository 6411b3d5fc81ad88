"""Fixtures of the in-process HTTP app tests: a fake node and an httpx client over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.sources.http_fakes import FakeNode, client_for


@pytest.fixture
def fake() -> FakeNode:
    return FakeNode()


@pytest.fixture
async def client(fake: FakeNode) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(fake) as c:
        yield c
