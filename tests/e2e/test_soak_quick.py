"""The quick soak (``bench/soak.py --quick``) of worker kills and of a storage outage.

Real worker processes on the emulator and Azurite: 2,000 tasks while a random
worker is SIGKILLed every 2 s, then graphs while Azurite is down for 15 s.
Nothing published may be lost; a task may run twice only if a run of it was
in flight in a killed process; no graph node may run twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import soak

from boilermaker.storage.azurite import Azurite

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Azurite.available(), reason="Azurite is not installed: run `npm ci`"),
]


async def test_killed_workers_lose_nothing_and_repeat_only_runs_in_flight(tmp_path: Path) -> None:
    figures = await soak.kills(soak.Sizes.quick(), tmp_path)
    print(figures.report())
    assert figures.kills > 0
    assert figures.lost == 0, figures.report()
    assert figures.unexplained == 0, figures.report()
    assert figures.ok, figures.report()


async def test_graphs_finish_through_a_storage_outage_and_no_node_runs_twice(
    tmp_path: Path,
) -> None:
    figures = await soak.storage(soak.Sizes.quick(), tmp_path)
    print(figures.report())
    assert figures.lost == 0, figures.report()
    assert figures.duplicates == 0, figures.report()
    assert figures.ok, figures.report()
