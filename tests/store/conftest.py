from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.store import plan_data


@pytest.fixture(scope="package")
def plan_database() -> Iterator[tuple[Engine, list[str]]]:
    """PostgreSQL with 100,000 stored observations (``plan_data``), and the patients' identity numbers;
    shared by the plan tests of this package (building it takes seconds on a busy machine)."""
    with plan_data.plan_database() as found:
        yield found
