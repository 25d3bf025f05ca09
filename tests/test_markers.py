"""The integration mark cannot drift: the collection hook in tests/conftest.py refuses a test
that uses a server fixture without it (pure: fake items, no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import pytest_collection_modifyitems, unmarked_server_tests


class FakeItem:
    """What the hook reads of a collected test: its id, its fixtures, its marks."""

    def __init__(self, nodeid: str, fixturenames: tuple[str, ...], marked: bool) -> None:
        self.nodeid = nodeid
        self.fixturenames = fixturenames
        self.marked = marked

    def get_closest_marker(self, name: str) -> Any:
        return object() if self.marked and name == "integration" else None


def items(*fakes: FakeItem) -> list[pytest.Item]:
    return list(fakes)  # type: ignore[arg-type]


def test_unmarked_server_test_refuses_the_run() -> None:
    """A test reaching etcd through a fixture built on it, unmarked: a usage error naming it."""
    unmarked = FakeItem("t.py::test_a", ("setup", "live_etcd", "etcd", "tmp_path"), False)
    with pytest.raises(pytest.UsageError, match=r"not marked integration:\n  t\.py::test_a"):
        pytest_collection_modifyitems(items(unmarked))


def test_marked_and_pure_tests_pass() -> None:
    """Marked server tests and tests with no server fixture are left alone."""
    marked = FakeItem("t.py::test_b", ("containers", "docker_client"), True)
    pure = FakeItem("t.py::test_c", ("tmp_path", "monkeypatch"), False)
    assert unmarked_server_tests(items(marked, pure)) == []
    pytest_collection_modifyitems(items(marked, pure))
