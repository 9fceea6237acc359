"""Queue settings and the reader of Microsoft's emulator JSON config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from boilermaker.emulator import ConfigError, QueueSettings, load_config_file
from boilermaker.emulator.config import parse_config, parse_duration

MICROSOFT_SAMPLE = {
    "UserConfig": {
        "Namespaces": [
            {
                "Name": "sbemulatorns",
                "Queues": [
                    {
                        "Name": "queue.1",
                        "Properties": {
                            "DeadLetteringOnMessageExpiration": False,
                            "DefaultMessageTimeToLive": "PT1H",
                            "DuplicateDetectionHistoryTimeWindow": "PT20S",
                            "ForwardDeadLetteredMessagesTo": "",
                            "ForwardTo": "",
                            "LockDuration": "PT1M",
                            "MaxDeliveryCount": 3,
                            "RequiresDuplicateDetection": False,
                            "RequiresSession": False,
                        },
                    },
                    {"Name": "plain"},
                ],
                "Topics": [],
            }
        ],
        "Logging": {"Type": "File"},
    }
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1M", 60.0),
        ("PT30S", 30.0),
        ("PT0.5S", 0.5),
        ("PT1H30M", 5400.0),
        ("P14D", 14 * 86400.0),
        ("P1DT2H", 93600.0),
        ("00:05:00", 300.0),
        ("1.00:00:00", 86400.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "1M", "P1Y", "-PT1M", "PT1X", "soon"])
def test_parse_duration_refuses_bad_input(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_microsoft_sample_config_is_read_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MICROSOFT_SAMPLE))
    first, second = load_config_file(path)
    assert first == QueueSettings(
        name="queue.1",
        lock_duration=60.0,
        max_delivery_count=3,
        default_ttl=3600.0,
        dead_letter_on_expiration=False,
        requires_duplicate_detection=False,
        duplicate_detection_window=20.0,
    )
    assert "ForwardTo" in first.extra
    assert second == QueueSettings(name="plain")


def test_unlimited_ttl_means_none() -> None:
    config = {
        "UserConfig": {
            "Namespaces": [
                {
                    "Queues": [
                        {"Name": "q", "Properties": {"DefaultMessageTimeToLive": "P10675199D"}}
                    ]
                }
            ]
        }
    }
    [queue] = parse_config(config)
    assert queue.default_ttl is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "UserConfig"),
        ({"UserConfig": {"Namespaces": {}}}, "must be a list"),
        ({"UserConfig": {"Namespaces": [{"Queues": [{}]}]}}, "needs a Name"),
        (
            {"UserConfig": {"Namespaces": [{"Queues": [{"Name": "a"}, {"Name": "A"}]}]}},
            "defined twice",
        ),
        (
            {
                "UserConfig": {
                    "Namespaces": [
                        {"Queues": [{"Name": "a", "Properties": {"LockDuration": "PT10M"}}]}
                    ]
                }
            },
            "lock_duration",
        ),
        (
            {
                "UserConfig": {
                    "Namespaces": [
                        {"Queues": [{"Name": "a", "Properties": {"MaxDeliveryCount": "many"}}]}
                    ]
                }
            },
            "MaxDeliveryCount",
        ),
        (
            {"UserConfig": {"Namespaces": [{"Queues": [{"Name": "bad$name"}]}]}},
            "invalid queue name",
        ),
    ],
)
def test_bad_config_is_refused_with_a_clear_error(document: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("$", r"\$")):
        parse_config(document)


def test_config_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.json")


def test_queue_settings_validate_and_round_trip() -> None:
    settings = QueueSettings(name="q", lock_duration=5, default_ttl=10, max_message_size=2048)
    assert QueueSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ConfigError):
        QueueSettings(name="q", max_delivery_count=0)
    with pytest.raises(ConfigError):
        QueueSettings(name="q/$DeadLetterQueue")
    with pytest.raises(ConfigError, match="unknown"):
        QueueSettings.from_dict({"name": "q", "colour": "blue"})
