"""Built wheels install and import as separate distributions of one ``boilermaker`` package.

Core alone must work with no Azure package installed; all wheels together
must expose every subpackage from the distribution that owns it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.packaging.wheelhouse import DISTRIBUTIONS, make_env, run, uv_binary

pytestmark = pytest.mark.slow

CORE_ONLY_SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.util, sys
    from boilermaker import Boilermaker, retries
    from boilermaker.task import TaskGraphBuilder
    from boilermaker.memory import InMemoryBroker, InMemoryResultsStore

    azure = [m for m in ("azure", "azure.servicebus", "azure.storage.blob", "proton")
             if importlib.util.find_spec(m.split(".")[0]) is not None]
    assert not azure, f"azure packages present: {azure}"

    async def fetch(state, url): return url
    async def process(state): return 1
    async def save(state): return 2
    async def cleanup(state): return 3

    app = Boilermaker({"n": 0}, InMemoryBroker(), results_storage=InMemoryResultsStore())
    for fn in (fetch, process, save, cleanup):
        app.register_async(fn, policy=retries.RetryPolicy.default())
    f, p, s, c = (app.create_task(fetch, "api"), app.create_task(process),
                  app.create_task(save), app.create_task(cleanup))
    graph = TaskGraphBuilder().add(f).on_failure(f.task_id, c).then(p).then(s).build()

    async def run_graph():
        await app.publish_graph(graph)
        await app.apply_async(fetch, "x")
        await app.run_until_idle(timeout=10)
        return await app.wait_for_graph(graph.graph_id, timeout=10)

    progress = asyncio.run(run_graph())
    assert progress.complete and not progress.failed, progress
    try:  # the light publisher says what to install
        import boilermaker.servicebus_publisher
    except ImportError as exc:
        assert 'pip install "boilermaker-core[servicebus]"' in str(exc), exc
    else:
        raise AssertionError("boilermaker.servicebus_publisher imported without the SDK")
    for name in ("boilermaker.service_bus", "boilermaker.storage", "boilermaker.cli",
                 "boilermaker.emulator"):
        assert importlib.util.find_spec(name) is None, name
    print("core-only ok", len(graph))
    """
)

ALL_SCRIPT = textwrap.dedent(
    """
    import importlib, pathlib
    owners = {}
    for name in %r:
        module = importlib.import_module(name)
        owners[name] = pathlib.Path(module.__file__).parent.name
    from boilermaker import Boilermaker
    from boilermaker.service_bus import AzureServiceBus
    from boilermaker.storage import BlobClientStorage
    print("all ok", sorted(owners))
    """
)


def test_core_wheel_alone_works_without_azure(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = make_env(
        tmp_path / "core-only", "boilermaker-core", wheels=(wheels["boilermaker-core"],)
    )
    result = run([str(python), "-c", CORE_ONLY_SCRIPT])
    assert "core-only ok 4" in result.stdout


def test_each_wheel_owns_only_its_subpackage(wheels: dict[str, Path]) -> None:
    import zipfile

    for dist, package in DISTRIBUTIONS.items():
        names = zipfile.ZipFile(wheels[dist]).namelist()
        modules = [n for n in names if n.endswith(".py")]
        prefix = package.replace(".", "/") + "/"
        if dist == "boilermaker-core":
            others = [p.replace(".", "/") + "/" for p in DISTRIBUTIONS.values() if p != package]
            assert "boilermaker/__init__.py" in names
            assert not [m for m in modules if any(m.startswith(o) for o in others)]
        else:
            assert modules, f"{dist} has no modules"
            assert all(m.startswith(prefix) for m in modules), (dist, modules)
            assert "boilermaker/__init__.py" not in names


def test_all_wheels_together_import_every_subpackage(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    python = make_env(tmp_path / "all", *DISTRIBUTIONS, wheels=tuple(wheels.values()))
    result = run([str(python), "-c", ALL_SCRIPT % (list(DISTRIBUTIONS.values()),)])
    assert "all ok" in result.stdout


UPGRADE_SCRIPT = textwrap.dedent(
    """
    import shutil, subprocess, sys, pathlib
    from boilermaker.storage import BlobClientStorage
    from boilermaker.service_bus import AzureServiceBus
    script = pathlib.Path(sys.executable).parent / "boilermaker"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    print("upgrade ok", BlobClientStorage.__name__, "inspect" in out.stdout)
    """
)


def test_boilermaker_servicebus_alone_brings_the_cli_and_the_results_store(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    """What `pip install -U boilermaker-servicebus` gives a 1.4.1 user: the 1.4.1 wheel
    held the blob results store and the `boilermaker` command, so this one's
    requirements must bring both. Our wheels are resolved from its metadata alone."""
    env = tmp_path / "servicebus"
    python = make_env(env, "boilermaker-servicebus", wheels=())
    found = {p.parent for p in wheels.values()}
    assert len(found) == 1, found
    install = [uv_binary(), "pip", "install", "--offline", "--no-index", "--python", str(python)]
    run([*install, "--find-links", str(found.pop()), "boilermaker-servicebus"])
    run([uv_binary(), "pip", "check", "--python", str(python)])
    result = run([str(python), "-c", UPGRADE_SCRIPT])
    assert "upgrade ok BlobClientStorage True" in result.stdout
