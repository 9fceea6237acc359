"""The global options before the command (1.4.1's): --storage-url, --container, -v, --no-color.

They feed the same settings as each command's --results-* options; which one
wins is pinned down here, with a probe command on the real option decorators
and with real commands against Azurite.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click
import pytest
from click.testing import CliRunner

from boilermaker.cli.connection import ResultsOptions, global_options, results_options
from boilermaker.cli.main import cli
from boilermaker.cli.output import redact
from tests.cli.conftest import CLEAN_ENV, invoke
from tests.cli.stored_graphs import write_legacy_graph
from tests.conftest import unique_container_name

if TYPE_CHECKING:
    from boilermaker.storage.azurite import Azurite

CS_RESULTS = "DefaultEndpointsProtocol=http;AccountName=results;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/results;"
CS_STORAGE = "DefaultEndpointsProtocol=http;AccountName=storage;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/storage;"


@click.group()
@global_options
def probe() -> None:
    """A group with the real global options."""


@probe.command()
@results_options
def settings(results: ResultsOptions) -> None:
    click.echo(
        json.dumps(
            {
                "connection_string": results.connection_string,
                "storage_url": results.storage_url,
                "container": results.container,
                "account_from": results.account.hint if results.account else None,
                "container_from": (
                    results.container_setting.hint if results.container_setting else None
                ),
            }
        )
    )


def resolved(*args: str, **env: str) -> dict[str, Any]:
    result = CliRunner().invoke(probe, [*args], env={**CLEAN_ENV, **env})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_global_storage_url_and_container_feed_the_results_settings() -> None:
    got = resolved(
        "--storage-url", "https://acct.blob.core.windows.net", "--container", "c1", "settings"
    )

    assert got["storage_url"] == "https://acct.blob.core.windows.net"
    assert got["connection_string"] is None
    assert got["container"] == "c1"
    assert got["account_from"] == "'--storage-url' / BOILERMAKER_STORAGE_URL"
    assert got["container_from"] == "'--container' / BOILERMAKER_CONTAINER"


def test_the_1_4_1_variables_work_alone() -> None:
    got = resolved(
        "settings",
        BOILERMAKER_STORAGE_URL="https://acct.blob.core.windows.net",
        BOILERMAKER_CONTAINER="c1",
    )

    assert got["storage_url"] == "https://acct.blob.core.windows.net"
    assert got["container"] == "c1"


def test_the_command_line_beats_the_environment_and_a_commands_option_beats_the_global() -> None:
    env = {
        "BOILERMAKER_RESULTS_CONNECTION_STRING": CS_RESULTS,
        "BOILERMAKER_RESULTS_CONTAINER": "env-results",
        "BOILERMAKER_CONTAINER": "env-global",
    }

    global_beats_env = resolved(
        "--storage-url", "https://cli.example", "--container", "cli-global", "settings", **env
    )
    command_beats_global = resolved(
        "--storage-url",
        "https://cli.example",
        "--container",
        "cli-global",
        "settings",
        "--results-storage-url",
        "https://cmd.example",
        "--results-container",
        "cli-cmd",
        **env,
    )
    env_only = resolved("settings", **env, BOILERMAKER_STORAGE_URL="https://env.example")

    assert global_beats_env["storage_url"] == "https://cli.example"
    assert global_beats_env["container"] == "cli-global"
    assert command_beats_global["storage_url"] == "https://cmd.example"
    assert command_beats_global["container"] == "cli-cmd"
    # In the environment: the results connection string, then its alias, then the URLs.
    assert env_only["connection_string"] == CS_RESULTS
    assert env_only["storage_url"] is None
    assert env_only["container"] == "env-results"


def test_the_storage_connection_string_alias_and_which_variable_wins() -> None:
    alias = resolved("settings", BOILERMAKER_STORAGE_CONNECTION_STRING=CS_STORAGE)
    both = resolved(
        "settings",
        BOILERMAKER_STORAGE_CONNECTION_STRING=CS_STORAGE,
        BOILERMAKER_RESULTS_CONNECTION_STRING=CS_RESULTS,
    )
    alias_beats_url = resolved(
        "settings",
        BOILERMAKER_STORAGE_CONNECTION_STRING=CS_STORAGE,
        BOILERMAKER_STORAGE_URL="https://env.example",
    )

    assert alias["connection_string"] == CS_STORAGE
    assert alias["account_from"] == (
        "'--results-connection-string' / BOILERMAKER_STORAGE_CONNECTION_STRING"
    )
    assert both["connection_string"] == CS_RESULTS
    assert alias_beats_url["connection_string"] == CS_STORAGE


def test_bad_global_settings_are_usage_errors_naming_option_and_variable() -> None:
    bad_url = invoke("--storage-url", "nonsense", "--container", "results", "graph", "status", "g")
    bad_container = invoke(
        "--storage-url",
        "https://acct.blob.core.windows.net",
        "--container",
        "No_Such",
        "purge",
        "--older-than",
        "3",
    )
    bad_env_container = invoke(
        "inspect",
        "--graph",
        "g",
        BOILERMAKER_STORAGE_URL="https://acct.blob.core.windows.net",
        BOILERMAKER_CONTAINER="x",
    )
    nothing = invoke("inspect", "--graph", "g")
    no_container = invoke(
        "--storage-url", "https://acct.blob.core.windows.net", "inspect", "--graph", "g"
    )

    for result in (bad_url, bad_container, bad_env_container, nothing, no_container):
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
    assert "'--storage-url' / BOILERMAKER_STORAGE_URL" in bad_url.output
    assert "not a storage account URL" in bad_url.output
    assert "'--container' / BOILERMAKER_CONTAINER" in bad_container.output
    assert "'No_Such' is not a container name" in bad_container.output
    assert "'x' is not a container name" in bad_env_container.output
    assert "--storage-url" in nothing.output
    assert "BOILERMAKER_STORAGE_URL" in nothing.output
    assert "BOILERMAKER_STORAGE_CONNECTION_STRING" in nothing.output
    assert "--container" in no_container.output
    assert "BOILERMAKER_CONTAINER" in no_container.output


def test_purge_days_out_of_range_name_the_option() -> None:
    env = {"BOILERMAKER_STORAGE_URL": "https://acct.blob.core.windows.net"}
    for days in ("0", "31", "soon"):
        result = invoke("--container", "results", "purge", "--older-than", days, **env)
        assert result.exit_code == 2, result.output
        assert "'--older-than'" in result.output
    missing = invoke("--container", "results", "purge", **env)
    assert missing.exit_code == 2
    assert "'--older-than'" in missing.output


# -- against Azurite --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stalled_graph(azurite: Azurite) -> tuple[str, str]:
    container = unique_container_name("globals")
    graph = write_legacy_graph(
        azurite.connection_string, container, {"fetch": "success", "transform": "started"}
    )
    return container, graph.graph_id


def test_a_commands_results_container_beats_the_global_one(
    azurite: Azurite, stalled_graph: tuple[str, str]
) -> None:
    container, graph_id = stalled_graph
    env = {"BOILERMAKER_STORAGE_CONNECTION_STRING": azurite.connection_string}

    right = invoke(
        "--container",
        "wrong-container",
        "graph",
        "status",
        graph_id,
        "--results-container",
        container,
        **env,
    )
    wrong = invoke(
        "--container",
        container,
        "graph",
        "status",
        graph_id,
        "--results-container",
        "wrong-container",
        **env,
    )

    assert right.exit_code == 0, right.output
    assert graph_id in right.stdout
    assert wrong.exit_code == 1
    assert "does not exist" in wrong.output


def test_no_color_and_NO_COLOR_remove_the_colours(
    azurite: Azurite, stalled_graph: tuple[str, str]
) -> None:
    container, graph_id = stalled_graph
    env = {**CLEAN_ENV, "BOILERMAKER_STORAGE_CONNECTION_STRING": azurite.connection_string}
    args = ["--container", container, "inspect", "--graph", graph_id]

    def run(*extra: str, **more: str) -> str:
        result = CliRunner().invoke(cli, [*extra, *args], env={**env, **more}, color=True)
        assert result.exit_code == 1, result.output
        return result.stdout

    coloured = run()
    plain = run("--no-color")
    plain_env = run(NO_COLOR="1")

    assert "\x1b[" in coloured
    assert "\x1b[" not in plain
    assert "\x1b[" not in plain_env
    assert "started (stalled)" in plain


def test_verbose_logs_where_the_settings_came_from_without_secrets(
    azurite: Azurite, stalled_graph: tuple[str, str]
) -> None:
    container, graph_id = stalled_graph

    quiet = invoke(
        "--container",
        container,
        "inspect",
        "--graph",
        graph_id,
        BOILERMAKER_STORAGE_CONNECTION_STRING=azurite.connection_string,
    )
    verbose = invoke(
        "-v",
        "--container",
        container,
        "inspect",
        "--graph",
        graph_id,
        BOILERMAKER_STORAGE_CONNECTION_STRING=azurite.connection_string,
    )

    assert "DEBUG" not in quiet.stderr
    assert "DEBUG boilermaker.cli: results store: a connection string" in verbose.stderr
    assert "BOILERMAKER_STORAGE_CONNECTION_STRING" in verbose.stderr
    assert f"container '{container}' (from '--container' / BOILERMAKER_CONTAINER)" in verbose.stderr
    assert "AccountKey" not in verbose.output
    assert verbose.exit_code == 1


def test_errors_never_show_a_signature_or_an_account_key(azurite: Azurite) -> None:
    parts = dict(part.split("=", 1) for part in azurite.connection_string.split(";") if part)
    # Azurite refuses the made-up signature at once; the error names the container URL,
    # which the SDK gives with the SAS query string in it.
    sas = (
        f"BlobEndpoint={parts['BlobEndpoint']};SharedAccessSignature=sv=2024-05-04&sig=TOPSECRETSIG"
    )
    runs = [
        invoke(
            "--container",
            "results",
            "inspect",
            "--graph",
            "g-1",
            BOILERMAKER_STORAGE_CONNECTION_STRING=sas,
        ),
        invoke(
            "-v",
            "--container",
            "results",
            "purge",
            "--older-than",
            "3",
            BOILERMAKER_STORAGE_CONNECTION_STRING=sas,
        ),
    ]
    for result in runs:
        assert result.exit_code == 2, result.output
        assert "Error: results store: access denied" in result.output
        assert "***" in result.output
        assert "TOPSECRETSIG" not in result.output
        assert "Traceback" not in result.output
    malformed = invoke(
        "--container",
        "results",
        "inspect",
        "--graph",
        "g-1",
        BOILERMAKER_STORAGE_CONNECTION_STRING="AccountKey=" + parts["AccountKey"] + ";Nonsense",
    )
    assert malformed.exit_code == 2, malformed.output
    assert parts["AccountKey"] not in malformed.output


def test_redact_hides_keys_signatures_and_passwords_and_keeps_the_rest() -> None:
    text = (
        "Endpoint=sb://ns/;SharedAccessKeyName=root;SharedAccessKey=abc123= "
        "AccountName=a;AccountKey=c2VjcmV0==;BlobEndpoint=http://h/a "
        "http://h/c?sv=2024&sig=s%2Bg%3D&se=1 password=hunter2"
    )

    shown = redact(text)

    for secret in ("abc123", "c2VjcmV0", "s%2Bg%3D", "hunter2"):
        assert secret not in shown
    assert "SharedAccessKeyName=root" in shown
    assert "AccountName=a" in shown
    assert "http://h/c?***" in shown  # the whole query string: a SAS token lives there
