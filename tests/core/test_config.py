"""Config: settings from environment variables, errors naming where a bad value came from."""

from __future__ import annotations

import subprocess
import sys

import pytest

from boilermaker.config import ENVIRONMENT, Config, ConfigError
from boilermaker.exceptions import BoilermakerError
from boilermaker.worker import WorkerSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting in ENVIRONMENT.values():
        for variable in setting.names:
            monkeypatch.delenv(variable, raising=False)


def test_defaults_without_environment() -> None:
    config = Config()
    assert config.service_bus_namespace_url is None
    assert config.service_bus_queue_name is None
    assert config.azure_credential_include_msi is False
    assert config.max_message_size == 256 * 1024
    assert config.concurrency == 16
    assert WorkerSettings.from_config(config).effective_prefetch == 32
    assert config.results_container == "boilermaker"


def test_loads_the_published_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_BUS_NAMESPACE_URL", "https://ns.servicebus.windows.net/")
    monkeypatch.setenv("SERVICE_BUS_QUEUE_NAME", "work")
    monkeypatch.setenv("AZURE_CREDENTIAL_INCLUDE_MSI", "true")
    config = Config()
    assert config.service_bus_namespace_url == "https://ns.servicebus.windows.net/"
    assert config.service_bus_queue_name == "work"
    assert config.azure_credential_include_msi is True


def test_loads_boilermaker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOILERMAKER_MAX_MESSAGE_SIZE", "1048576")
    monkeypatch.setenv("BOILERMAKER_CONCURRENCY", "4")
    monkeypatch.setenv("BOILERMAKER_PREFETCH", "0")
    monkeypatch.setenv("BOILERMAKER_MAX_LOCK_RENEWAL", "90.5")
    monkeypatch.setenv("BOILERMAKER_SHUTDOWN_GRACE", "0")
    monkeypatch.setenv("SERVICE_BUS_CONNECTION_STRING", "Endpoint=sb://x/;SharedAccessKey=hush")
    monkeypatch.setenv("BOILERMAKER_RESULTS_CONTAINER", "results")
    config = Config()
    assert config.max_message_size == 1_048_576
    assert config.concurrency == 4
    assert WorkerSettings.from_config(config).effective_prefetch == 0
    assert config.max_lock_renewal_seconds == 90.5
    assert config.shutdown_grace_seconds == 0
    assert config.results_container == "results"
    secret = config.service_bus_connection_string
    assert secret is not None
    assert secret.get_secret_value().endswith("hush")
    assert "hush" not in repr(config)
    assert "hush" not in str(config)


def test_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_BUS_QUEUE_NAME", "from-env")
    monkeypatch.setenv("BOILERMAKER_CONCURRENCY", "not a number")
    config = Config(service_bus_queue_name="explicit", concurrency=2)
    assert config.service_bus_queue_name == "explicit"
    assert config.concurrency == 2


def test_empty_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOILERMAKER_CONCURRENCY", "")
    monkeypatch.setenv("SERVICE_BUS_QUEUE_NAME", "")
    config = Config()
    assert config.concurrency == 16
    assert config.service_bus_queue_name is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BOILERMAKER_CONCURRENCY", "lots"),
        ("BOILERMAKER_CONCURRENCY", "0"),
        ("BOILERMAKER_MAX_MESSAGE_SIZE", "100"),
        ("BOILERMAKER_PREFETCH", "-1"),
        ("BOILERMAKER_MAX_LOCK_RENEWAL", "0"),
        ("AZURE_CREDENTIAL_INCLUDE_MSI", "sometimes"),
    ],
)
def test_a_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"environment variable {variable}: "):
        Config()


def test_several_bad_values_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOILERMAKER_CONCURRENCY", "lots")
    with pytest.raises(ConfigError) as info:
        Config(max_message_size=10)
    message = str(info.value)
    assert "environment variable BOILERMAKER_CONCURRENCY" in message
    assert "argument max_message_size" in message


def test_bad_and_unknown_arguments_are_named() -> None:
    with pytest.raises(ConfigError, match="argument concurrency"):
        Config(concurrency=0)
    with pytest.raises(ConfigError, match="argument queue_name"):
        Config(queue_name="typo")


def test_config_errors_are_boilermaker_value_errors() -> None:
    with pytest.raises(BoilermakerError):
        Config(concurrency=-1)
    with pytest.raises(ValueError):
        Config(concurrency=-1)


def test_importing_config_imports_nothing_from_azure() -> None:
    code = (
        "import sys, boilermaker.config, boilermaker\n"
        "boilermaker.config.Config()\n"
        "azure = ('azure', 'aio_azure_clients_toolbox')\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in azure]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- one definition of every variable ------------------------------------------------------


def test_every_environment_variable_in_the_code_is_defined_in_config() -> None:
    import re
    from pathlib import Path

    from boilermaker import config

    root = Path(__file__).resolve().parents[2] / "packages"
    pattern = re.compile(r"\b(?:BOILERMAKER|SERVICE_BUS|AZURE_CREDENTIAL)_[A-Z_]+\b")
    named = {
        match.group(0)
        for path in root.glob("*/src/**/*.py")
        for match in pattern.finditer(path.read_text())
    }
    defined = {name for s in config.ENVIRONMENT.values() for name in s.names}
    defined |= {config.WORKER_INDEX_ENV, config.AZURITE_ENV}
    assert named, "the scan found nothing"
    assert named <= defined, f"read but not defined in boilermaker.config: {named - defined}"


def test_settings_are_read_from_their_variable_or_its_alias(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOILERMAKER_CONTAINER", "from-alias")
    assert Config().results_container == "from-alias"
    monkeypatch.setenv("BOILERMAKER_RESULTS_CONTAINER", "from-main")
    assert Config().results_container == "from-main"
    monkeypatch.setenv("BOILERMAKER_TASK_TIMEOUT", "-3")
    with pytest.raises(ConfigError, match="environment variable BOILERMAKER_TASK_TIMEOUT"):
        Config()
    assert ENVIRONMENT["results_container"].aliases == ("BOILERMAKER_CONTAINER",)
    assert all(s.description for s in ENVIRONMENT.values())


def test_worker_settings_come_from_config() -> None:
    from boilermaker.worker import WorkerSettings

    settings = WorkerSettings.from_config(
        Config(concurrency=3, task_timeout_seconds=9, shutdown_grace_seconds=1)
    )
    assert (settings.concurrency, settings.task_timeout, settings.shutdown_grace) == (3, 9, 1)
    assert settings.effective_prefetch == 6
