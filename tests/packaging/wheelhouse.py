"""Building wheels, making fresh venvs and installing into them, for the packaging tests.

Wheels are built with ``uv build --offline`` (once per session: the ``wheels``
fixture in conftest.py); third-party packages are installed at the workspace
lock file's versions from uv's cache (``--offline``), so nothing is downloaded
at test time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def uv_binary() -> str:
    """The uv binary: the one running us (``uv run`` sets UV), else the one on PATH."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is required to build wheels")
    return uv


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command outside the workspace venv; fails the test with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(kwargs.pop("env", None) or {})  # type: ignore[call-overload]
    result = subprocess.run(args, capture_output=True, text=True, env=env, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(str(a)[:60] for a in args[:4])} ... exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result  # type: ignore[no-any-return]


def build_wheels(out: Path) -> dict[str, Path]:
    """Build one wheel per distribution of the workspace into ``out``."""
    run([uv_binary(), "build", "--all-packages", "--wheel", "--offline", "-o", str(out)], cwd=ROOT)
    built = {}
    for dist in DISTRIBUTIONS:
        found = list(out.glob(dist.replace("-", "_") + "-*.whl"))
        assert len(found) == 1, f"expected one wheel for {dist}, found {found}"
        built[dist] = found[0]
    return built


def make_env(
    path: Path, *packages: str, extras: tuple[str, ...] = (), wheels: tuple[Path, ...]
) -> Path:
    """A fresh venv at ``path`` with our ``wheels`` and the third-party requirements of
    ``packages`` (and their ``extras``) at the workspace lock file's versions; returns
    its interpreter.

    Third-party packages come from ``uv sync --frozen --offline``, which reads the lock
    file and so needs only the wheels ``make install`` put in uv's cache (an offline
    ``uv pip install -r`` would also need the registry's index pages, which a fresh
    cache lacks). Our wheels go in with ``--no-deps``; ``uv pip check`` then fails the
    test if any installed distribution, ours included, lacks a requirement.
    """
    sync = [uv_binary(), "sync", "--frozen", "--offline", "--no-dev", "--no-install-workspace"]
    sync += ["--python", sys.executable]
    for package in packages:
        sync += ["--package", package]
    for extra in extras:
        sync += ["--extra", extra]
    run(sync, cwd=ROOT, env={"UV_PROJECT_ENVIRONMENT": str(path)})
    python = path / "bin" / "python"
    pip = [uv_binary(), "pip"]
    if wheels:
        install = [*pip, "install", "--offline", "--no-deps", "--python", str(python)]
        run([*install, *map(str, wheels)])
        run([*pip, "check", "--python", str(python)])
    return python
