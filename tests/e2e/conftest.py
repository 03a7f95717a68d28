"""Fixtures shared by the end-to-end tests: the local link-graph site and the in-process tiers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack


@pytest.fixture
async def site() -> AsyncIterator[TestSite]:
    s = await TestSite().start()
    yield s
    await s.stop()


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(settings).start()
    yield st
    await st.stop()
