"""Fixtures for the packaging tests: the workspace's wheels, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.wheelhouse import build_wheels


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One freshly built wheel per distribution of the workspace (``uv build --offline``)."""
    return build_wheels(tmp_path_factory.mktemp("wheels"))
