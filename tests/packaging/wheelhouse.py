"""Building wheels, making fresh venvs and installing into them, for the packaging tests.

Wheels are built with ``uv build --offline`` (once per session: the ``wheels``
fixture in conftest.py); third-party packages are installed at the versions
``uv export --frozen`` pins from the workspace lock file, from uv's cache
(``--offline``), so nothing is downloaded at test time.
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


def make_venv(path: Path) -> Path:
    """A fresh venv on the running Python; returns its interpreter."""
    run([uv_binary(), "venv", "--python", sys.executable, str(path)])
    return path / "bin" / "python"


def install(python: Path, pins: Path, *requirements: Path | str) -> None:
    """Install wheels (``path`` or ``"name[extra] @ file://..."``) with third-party
    versions pinned to the workspace lock file."""
    args = [uv_binary(), "pip", "install", "--offline", "--python", str(python), "-r", str(pins)]
    run([*args, *map(str, requirements)])


def pins(tmp_path: Path, *packages: str, extras: tuple[str, ...] = ()) -> Path:
    """Locked third-party requirements of ``packages`` (and their ``extras``)."""
    args = [uv_binary(), "export", "--frozen", "--no-hashes", "--no-emit-workspace", "--no-dev"]
    args.append("-q")
    for package in packages:
        args += ["--package", package]
    for extra in extras:
        args += ["--extra", extra]
    out = tmp_path / "pins.txt"
    out.write_text(run(args, cwd=ROOT).stdout)
    return out
