"""Peer libraries for the benchmarks, each pinned in an environment of its own.

    python bench/peer_envs.py install [NAME ...]   # make install runs this; never fails
    python bench/peer_envs.py check [NAME ...]     # exit 1 (and say why) unless ready
    python bench/peer_envs.py python NAME          # print NAME's interpreter

``bench/peers_bench.py`` runs two peers of boilermaker next to the raw
azure-servicebus SDK: ``taskiq`` (taskiq-service-bus with taskiq) and
``faststream`` (faststream-azure-servicebus with faststream). Neither is ever
imported into the project's environment: each lives in
``.bench/peers/<name>/`` and runs its benchmark script
(``bench/peers/<name>_child.py``) with its own interpreter. Every package in
an environment is pinned, with hashes, by ``bench/peers/requirements-<name>.txt``
(compiled from the ``.in`` next to it with ``uv pip compile --python-version
3.11 --generate-hashes``), so the same bytes are installed everywhere.

Installing happens once: an environment records the SHA-256 of the
requirements it was installed from, and ``install`` does nothing while that
matches. ``install`` exits 0 even when a peer cannot be installed (offline,
say): it prints one line saying which and why, and the benchmark then reports
that peer as not installed. A peer must never break ``make install``.

Mirrors ``tests/compat/published_env.py``. Standard library only, so that any
interpreter can run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PYTHON_VERSION = "3.11"

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
PEERS_DIR = HERE / "peers"
ENVS_DIR = REPO_ROOT / ".bench" / "peers"
LOCK = ENVS_DIR / ".install.lock"

# The installing helpers are the 1.4.1 environment's (standard library only too).
sys.path.insert(0, str(REPO_ROOT))
from tests.compat.published_env import base_python, install_lock, uv_command  # noqa: E402

#: Peer name -> what its environment is for (the package the benchmark measures).
PEERS: dict[str, str] = {
    "taskiq": "taskiq-service-bus 0.3.0 (taskiq)",
    "faststream": "faststream-azure-servicebus 0.2.1 (faststream)",
}


class PeerEnvMissing(RuntimeError):
    """A peer's environment is absent or was installed from other requirements."""


def _known(name: str) -> str:
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return name


def requirements(name: str) -> Path:
    """The pinned, hashed requirements of peer ``name``."""
    return PEERS_DIR / f"requirements-{_known(name)}.txt"


def env_dir(name: str) -> Path:
    """Where peer ``name``'s environment lives (``.bench/peers/<name>/``)."""
    return ENVS_DIR / _known(name)


def python(name: str) -> Path:
    """Peer ``name``'s interpreter (which may not exist yet)."""
    return env_dir(name) / "bin" / "python"


def child_script(name: str) -> Path:
    """The benchmark script peer ``name``'s interpreter runs."""
    return PEERS_DIR / f"{_known(name)}_child.py"


def _marker(name: str) -> Path:
    return env_dir(name) / ".installed.json"


def _requirements_digest(name: str) -> str:
    return hashlib.sha256(requirements(name).read_bytes()).hexdigest()


def problem(name: str) -> str | None:
    """Why peer ``name``'s environment is not ready to use, or None when it is."""
    where = env_dir(name)
    if not requirements(name).exists():
        return f"{requirements(name)} is missing"
    if not python(name).exists():
        return f"{where} does not exist"
    try:
        recorded = json.loads(_marker(name).read_text())
    except (OSError, ValueError):
        return f"{where} has no install record (an install did not finish)"
    if recorded.get("requirements_sha256") != _requirements_digest(name):
        return f"{where} was installed from other requirements than {requirements(name).name}"
    return None


def require(name: str) -> Path:
    """The interpreter of peer ``name``'s ready environment; never installs anything."""
    why = problem(name)
    if why is not None:
        raise PeerEnvMissing(
            f"{PEERS[name]} is not installed for the benchmarks ({why}): run `make install`"
        )
    return python(name)


def _run(step: str, command: list[str], env: dict[str, str]) -> None:
    """Run an install step quietly; on failure raise with uv's own error, on one line."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return
    said = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    error = next((line for line in said if line.startswith("error:")), said[-1] if said else "")
    causes = [line.removeprefix("cause:").strip() for line in said if line.startswith("cause:")]
    why = error + (f" ({causes[-1]})" if causes else "")
    raise RuntimeError(f"{step} exited {done.returncode}: {why or 'no output'}")


def ensure(name: str, quiet: bool = False) -> Path:
    """Install peer ``name`` unless it is already there and matching; its python.

    Raises:
        RuntimeError: uv could not create the environment or install into it
            (the message carries uv's own error line).
    """
    with install_lock(LOCK):
        why = problem(name)
        if why is None:
            return python(name)
        if not quiet:
            print(f"installing {PEERS[name]} into {env_dir(name)} ({why})", flush=True)
        # uv must not aim at the project's environment.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
        }
        _marker(name).unlink(missing_ok=True)
        uv = uv_command()
        try:
            _run(
                "uv venv",
                [
                    *uv,
                    "venv",
                    "--quiet",
                    "--clear",
                    "--python",
                    base_python(PYTHON_VERSION),
                    str(env_dir(name)),
                ],
                env,
            )
            _run(
                "uv pip sync",
                [
                    *uv,
                    "pip",
                    "sync",
                    "--quiet",
                    "--python",
                    str(python(name)),
                    str(requirements(name)),
                ],
                env,
            )
        except FileNotFoundError as exc:  # no uv at all
            raise RuntimeError(f"uv not found ({exc})") from None
        _marker(name).write_text(
            json.dumps({"requirements_sha256": _requirements_digest(name), "peer": PEERS[name]})
            + "\n"
        )
        return python(name)


def install(names: Sequence[str] = ()) -> int:
    """Install the named peers (all by default); one line per peer that failed; always 0."""
    for name in names or PEERS:
        try:
            ensure(name)
        except Exception as exc:  # a peer must never break `make install`
            print(
                f"peer benchmark env {name!r} ({PEERS.get(name, '?')}) not installed: {exc}; "
                "bench/peers_bench.py will skip it",
                flush=True,
            )
    return 0


def main(argv: list[str]) -> int:
    """The command line: ``install`` (the default), ``check`` or ``python``."""
    command, names = (argv[0], argv[1:]) if argv else ("install", [])
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        print(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}", file=sys.stderr)
        return 2
    if command == "install":
        return install(names)
    if command == "check":
        problems = [(n, problem(n)) for n in names or PEERS]
        for name, why in problems:
            if why is not None:
                print(f"{name}: {why}", file=sys.stderr)
        return 1 if any(why for _, why in problems) else 0
    if command == "python" and len(names) == 1:
        try:
            print(require(names[0]))
        except PeerEnvMissing as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    print(
        f"usage: {Path(__file__).name} [install [NAME ...]|check [NAME ...]|python NAME]"
        f" (NAME: {', '.join(PEERS)})",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
