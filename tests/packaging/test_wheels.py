"""Built wheels install and import as separate distributions of one ``boilermaker`` package.

Core alone must work with no Azure package installed; all wheels together
must expose every subpackage from the distribution that owns it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {
    "boilermaker-core": "boilermaker",
    "boilermaker-servicebus": "boilermaker.service_bus",
    "boilermaker-results": "boilermaker.storage",
    "boilermaker-cli": "boilermaker.cli",
    "boilermaker-emulator": "boilermaker.emulator",
}

pytestmark = pytest.mark.slow

CORE_ONLY_SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.util, sys
    from boilermaker import Boilermaker, retries
    from boilermaker.task import TaskGraphBuilder
    from boilermaker.memory import InMemoryBroker

    azure = [m for m in ("azure", "azure.servicebus", "azure.storage.blob", "proton")
             if importlib.util.find_spec(m.split(".")[0]) is not None]
    assert not azure, f"azure packages present: {azure}"

    async def fetch(state, url): return url
    async def process(state): return 1
    async def save(state): return 2
    async def cleanup(state): return 3

    app = Boilermaker({"n": 0}, InMemoryBroker())
    for fn in (fetch, process, save, cleanup):
        app.register_async(fn, policy=retries.RetryPolicy.default())
    f, p, s, c = (app.create_task(fetch, "api"), app.create_task(process),
                  app.create_task(save), app.create_task(cleanup))
    graph = TaskGraphBuilder().add(f).on_failure(f.task_id, c).then(p).then(s).build()
    assert graph.children[f.task_id] == [p.task_id]
    asyncio.run(app.apply_async(fetch, "x"))
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


def _uv() -> str | None:
    """The uv binary: the one running us (``uv run`` sets UV), else the one on PATH."""
    return os.environ.get("UV") or shutil.which("uv")


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    uv = _uv()
    if uv is None:
        pytest.fail("uv is required to build wheels")
    out = tmp_path_factory.mktemp("wheels")
    _run([uv, "build", "--all-packages", "--wheel", "--offline", "-o", str(out)], cwd=ROOT)
    built = {}
    for dist in DISTRIBUTIONS:
        found = list(out.glob(dist.replace("-", "_") + "-*.whl"))
        assert len(found) == 1, f"expected one wheel for {dist}, found {found}"
        built[dist] = found[0]
    return built


def _venv(path: Path) -> Path:
    uv = _uv()
    assert uv is not None
    _run([uv, "venv", "--python", sys.executable, str(path)])
    return path / "bin" / "python"


def _install(python: Path, pins: Path, *wheels: Path) -> None:
    """Install wheels with third-party versions pinned to the workspace lock file."""
    uv = _uv()
    assert uv is not None
    _run([uv, "pip", "install", "--python", str(python), "-r", str(pins), *map(str, wheels)])


def _pins(tmp_path: Path, *packages: str) -> Path:
    uv = _uv()
    assert uv is not None
    args = [uv, "export", "--frozen", "--no-hashes", "--no-emit-workspace", "--no-dev", "-q"]
    for package in packages:
        args += ["--package", package]
    out = tmp_path / "pins.txt"
    out.write_text(_run(args, cwd=ROOT).stdout)
    return out


def test_core_wheel_alone_works_without_azure(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = _venv(tmp_path / "core-only")
    _install(python, _pins(tmp_path, "boilermaker-core"), wheels["boilermaker-core"])
    result = _run([str(python), "-c", CORE_ONLY_SCRIPT])
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
    python = _venv(tmp_path / "all")
    _install(python, _pins(tmp_path, *DISTRIBUTIONS), *wheels.values())
    result = _run([str(python), "-c", ALL_SCRIPT % (list(DISTRIBUTIONS.values()),)])
    assert "all ok" in result.stdout
