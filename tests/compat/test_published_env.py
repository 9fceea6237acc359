"""The 1.4.1 environment: pinned exactly, kept apart from ours, never installed by a test."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
from pathlib import Path

import pytest

import boilermaker
from tests.compat import published_env

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in published_env.REQUIREMENTS.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[_normal(match.group(1))] = match.group(2)
    return pins


def test_the_published_environment_holds_exactly_the_pinned_packages(
    published_python: Path,
) -> None:
    listing = subprocess.run(
        [
            str(published_python),
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    installed = {_normal(k): v for k, v in json.loads(listing.stdout).items()}
    pins = _pins()
    assert pins["boilermaker-servicebus"] == published_env.VERSION
    assert installed == pins


def test_the_project_environment_does_not_have_the_published_library() -> None:
    assert importlib.metadata.version("boilermaker-servicebus") != published_env.VERSION
    here = Path(boilermaker.__file__).resolve()
    assert published_env.ENV_DIR not in here.parents
    assert "packages" in here.parts


def test_a_missing_environment_fails_with_the_command_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(published_env, "ENV_DIR", tmp_path / "absent")
    monkeypatch.setattr(published_env, "MARKER", tmp_path / "absent" / ".installed.json")
    with pytest.raises(published_env.PublishedEnvMissing, match="run `make install`"):
        published_env.require()


def test_an_environment_from_other_requirements_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").touch()
    marker = env / ".installed.json"
    monkeypatch.setattr(published_env, "ENV_DIR", env)
    monkeypatch.setattr(published_env, "MARKER", marker)
    assert published_env.problem() is not None  # installed, but never recorded as finished
    marker.write_text(json.dumps({"requirements_sha256": "0" * 64}))
    assert "other requirements" in (published_env.problem() or "")
    with pytest.raises(published_env.PublishedEnvMissing, match="run `make install`"):
        published_env.require()
    marker.write_text(json.dumps({"requirements_sha256": published_env._requirements_digest()}))
    assert published_env.problem() is None
    assert published_env.require() == env / "bin" / "python"
