"""The published boilermaker-servicebus 1.4.1 in an environment of its own.

    python tests/compat/published_env.py install   # make install runs this
    python tests/compat/published_env.py check     # exit 1 (and say why) unless ready
    python tests/compat/published_env.py python    # print its interpreter

The compatibility tests and the benchmarks run 1.4.1 as a separate
interpreter in ``.compat/boilermaker-1.4.1/``; it is never imported into the
project's environment. Every package in it is pinned, with hashes, by
``requirements-1.4.1.txt`` (compiled from ``requirements-1.4.1.in`` with
``uv pip compile --python-version 3.11 --generate-hashes``), so the same
bytes are installed everywhere.

Installing happens once: the environment records the SHA-256 of the
requirements it was installed from, and ``install`` does nothing while that
matches. Tests only call :func:`require`, which never downloads: it says to run
``make install`` when the environment is missing or stale.

Standard library only, so that any interpreter can run it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

VERSION = "1.4.1"
PYTHON_VERSION = "3.11"

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
REQUIREMENTS = HERE / f"requirements-{VERSION}.txt"
ENV_DIR = REPO_ROOT / ".compat" / f"boilermaker-{VERSION}"
MARKER = ENV_DIR / ".installed.json"
LOCK = ENV_DIR.parent / ".install.lock"


class PublishedEnvMissing(RuntimeError):
    """The 1.4.1 environment is absent or was installed from other requirements."""


def python() -> Path:
    """The 1.4.1 environment's interpreter (which may not exist yet)."""
    return ENV_DIR / "bin" / "python"


def _requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def problem() -> str | None:
    """Why the environment is not ready to use, or None when it is."""
    if not python().exists():
        return f"{ENV_DIR} does not exist"
    try:
        recorded = json.loads(MARKER.read_text())
    except (OSError, ValueError):
        return f"{ENV_DIR} has no install record (an install did not finish)"
    if recorded.get("requirements_sha256") != _requirements_digest():
        return f"{ENV_DIR} was installed from other requirements than {REQUIREMENTS.name}"
    return None


def require() -> Path:
    """The interpreter of a ready environment; never installs anything."""
    why = problem()
    if why is not None:
        raise PublishedEnvMissing(
            f"boilermaker-servicebus {VERSION} is not installed for the compatibility "
            f"tests ({why}): run `make install`"
        )
    return python()


def uv_command() -> list[str]:
    """The uv that runs us (``uv run`` sets UV), else uv on PATH, else ``python -m uv``."""
    found = os.environ.get("UV") or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def base_python(version: str = PYTHON_VERSION) -> str:
    """This interpreter if it is ``version`` (the requirements'), else that version for uv."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    return version


@contextlib.contextmanager
def install_lock(lock: Path = LOCK) -> Iterator[None]:
    """One installer at a time (make install and a benchmark may start together)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(quiet: bool = False) -> Path:
    """Install the pinned environment unless it is already there and matching; its python."""
    with install_lock():
        why = problem()
        if why is None:
            return python()
        if not quiet:
            print(
                f"installing boilermaker-servicebus=={VERSION} into {ENV_DIR} ({why})", flush=True
            )
        # uv must not aim at the project's environment.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
        }
        MARKER.unlink(missing_ok=True)
        uv = uv_command()
        subprocess.run(
            [*uv, "venv", "--quiet", "--clear", "--python", base_python(), str(ENV_DIR)],
            check=True,
            env=env,
        )
        subprocess.run(
            [*uv, "pip", "sync", "--quiet", "--python", str(python()), str(REQUIREMENTS)],
            check=True,
            env=env,
        )
        MARKER.write_text(
            json.dumps({"requirements_sha256": _requirements_digest(), "version": VERSION}) + "\n"
        )
        return python()


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "install"
    if command == "install":
        ensure()
        return 0
    if command == "check":
        why = problem()
        if why is not None:
            print(why, file=sys.stderr)
            return 1
        return 0
    if command == "python":
        print(require())
        return 0
    print(f"usage: {Path(__file__).name} [install|check|python]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
