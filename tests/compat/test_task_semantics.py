"""A task's retry numbering, retry delays and shift operators are 1.4.1's, run side by side.

``drivers/task_semantics.py`` runs under the published 1.4.1 and under ours;
the outputs must be equal key by key. A user's retry waits, retry message ids
(which duplicate detection keys on, across a rolling upgrade) and ``<<``
chains do not change when they upgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import run_driver


@pytest.fixture(scope="module")
def published(published_python: Path) -> dict[str, Any]:
    result = run_driver(published_python, "task_semantics.py")
    assert result["library"] == "1.4.1"
    return result


@pytest.fixture(scope="module")
def ours(our_python: Path) -> dict[str, Any]:
    result = run_driver(our_python, "task_semantics.py")
    assert result["library"] != "1.4.1"
    return result


def test_retry_ids_and_delays_after_each_run_are_1_4_1s(
    published: dict[str, Any], ours: dict[str, Any]
) -> None:
    assert set(published["retries"]) == set(ours["retries"])
    assert len(ours["retries"]) == 3
    for mode, rows in published["retries"].items():
        assert ours["retries"][mode] == rows, mode
    # The figures themselves, so an equal mistake in both cannot pass unseen.
    linear = {row["runs"]: row for row in ours["retries"]["Linear"]}
    assert (linear[1]["retry_id"], linear[1]["delay"]) == ("1", 60)


def test_shift_operators_return_and_link_what_1_4_1s_do(
    published: dict[str, Any], ours: dict[str, Any]
) -> None:
    assert ours["operators"] == published["operators"]
    assert ours["operators"]["a << b returns"] == "a"
