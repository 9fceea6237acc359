"""``boilermaker dlq`` against the emulator: tasks dead-lettered by a real worker.

Each command opens its own SDK connection (about a second on the emulator),
so the read-only tests share one queue and the others each check a whole
story on a fresh one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from typing import Any

from boilermaker.dead_letters import (
    DEAD_LETTER_REASON,
    ORIGINAL_MESSAGE_ID,
    ORIGINAL_SEQUENCE_NUMBER,
    REPLAY_COUNT,
    REPLAYED_AT,
)
from boilermaker.worker import (
    EXPECTATION_FAILED,
    INVALID_TASK_FORMAT,
    PROCESSING_ERROR,
    TASK_FAILED,
)
from tests.cli.conftest import DeadLetters, drained, invoke

ALL_REASONS = sorted(
    [TASK_FAILED, TASK_FAILED, PROCESSING_ERROR, EXPECTATION_FAILED, INVALID_TASK_FORMAT]
)


def listed(letters: DeadLetters, *args: str) -> list[dict[str, Any]]:
    """``dlq list --json`` with extra arguments."""
    result = invoke("dlq", "list", "--json", *args, *letters.options())
    assert result.exit_code == 0, result.output
    docs: list[dict[str, Any]] = json.loads(result.stdout)
    return docs


def shown_fields(text: str) -> dict[str, str]:
    """The ``Name: value`` lines of ``dlq show``."""
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            fields[name] = value.strip()
    return fields


def text(value: Any) -> Any:
    """An AMQP property value as the SDK may hand it over (bytes for strings)."""
    return value.decode() if isinstance(value, bytes) else value


# -- read-only: list, show, dry runs ------------------------------------------------------------


def test_list_shows_every_dead_letter_with_its_reason(shared_dead_letters: DeadLetters) -> None:
    result = invoke("dlq", "list", *shared_dead_letters.options())

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == [
        "SEQ",
        "ENQUEUED",
        "(UTC)",
        "REASON",
        "FUNCTION",
        "ATTEMPTS",
        "DESCRIPTION",
    ]
    assert len(rows) == 5
    for reason in ALL_REASONS:
        assert reason in result.stdout
    assert "ValueError: card declined for o-1" in result.stdout
    assert "ghost" in result.stdout
    assert "5 dead-lettered message(s)" in result.stderr


def test_list_json_has_decoded_tasks_and_undecodable_bodies_and_locks_nothing(
    shared_dead_letters: DeadLetters,
) -> None:
    letters = listed(shared_dead_letters)

    assert sorted(letter["reason"] for letter in letters) == ALL_REASONS
    by_reason = {letter["reason"]: letter for letter in letters}
    junk = by_reason[INVALID_TASK_FORMAT]
    assert junk["task"] is None
    assert junk["message_id"] == "junk-1"
    assert "UTF-8" in junk["decode_error"]
    failed = by_reason[TASK_FAILED]
    assert failed["task"]["function_name"] == "charge"
    assert failed["attempts_made"] == 1
    assert failed["description"].startswith("ValueError: card declined")
    assert by_reason[EXPECTATION_FAILED]["task"]["args"] == [7]
    assert by_reason[PROCESSING_ERROR]["attempts_made"] == 1
    seqs = [letter["sequence_number"] for letter in letters]
    assert seqs == sorted(seqs)
    assert all(datetime.fromisoformat(letter["enqueued_time"]).tzinfo for letter in letters)
    # Listing peeks: nothing was locked or counted as a delivery.
    assert all(letter["delivery_count"] == 0 for letter in letters)
    assert shared_dead_letters.counts().dead_lettered == 5


def test_list_filters_reach_the_dead_letter_queue(shared_dead_letters: DeadLetters) -> None:
    by_reason = listed(shared_dead_letters, "--reason", "taskfailed", "--limit", "1")
    by_function = listed(shared_dead_letters, "--function", "poll", "--since", "1h")

    assert [letter["reason"] for letter in by_reason] == [TASK_FAILED]
    assert [letter["reason"] for letter in by_function] == [PROCESSING_ERROR]


def test_show_prints_one_dead_letter_in_full(shared_dead_letters: DeadLetters) -> None:
    (letter,) = listed(shared_dead_letters, "--function", "charge", "--limit", "1")
    seq = str(letter["sequence_number"])

    shown = invoke("dlq", "show", seq, *shared_dead_letters.options())
    as_json = invoke("dlq", "show", seq, "--json", *shared_dead_letters.options())

    assert shown.exit_code == 0, shown.output
    fields = shown_fields(shown.stdout)
    assert fields["Sequence number"] == seq
    assert fields["Reason"] == TASK_FAILED
    assert fields["Description"].startswith("ValueError: card declined")
    assert fields["Function"] == "charge"
    assert fields["Attempts made"] == "1"
    assert fields["Arguments"].startswith('["o-')
    assert "  boilermaker_function: charge" in shown.stdout
    doc = json.loads(as_json.stdout)
    assert doc["application_properties"]["boilermaker_function"] == "charge"
    assert json.loads(doc["body"])["function_name"] == "charge"


def test_show_of_an_unknown_sequence_number_is_an_error(shared_dead_letters: DeadLetters) -> None:
    missing = invoke("dlq", "show", "999999", *shared_dead_letters.options())

    assert missing.exit_code == 1
    assert "no dead-lettered message with sequence number 999999" in missing.output
    assert "Traceback" not in missing.output


#: The ``boilermaker`` command with an exit hook that says whether Python's shutdown ran.
ENTRY_WITH_EXIT_HOOK = (
    "import atexit, sys; atexit.register(lambda: sys.stderr.write('shutdown ran\\n')); "
    "from boilermaker.cli.main import entry; entry()"
)


def boilermaker_process(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``boilermaker`` entry point in a process of its own, output piped."""
    return subprocess.run(
        [sys.executable, "-c", ENTRY_WITH_EXIT_HOOK, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


def test_a_read_only_command_ends_its_process_at_once_with_its_output_and_status(
    shared_dead_letters: DeadLetters,
) -> None:
    # dlq list and show skip Python's shutdown (they hold nothing once done);
    # what they printed, to a pipe, arrives whole, and the status is kept.
    listing = boilermaker_process("dlq", "list", "--json", *shared_dead_letters.options())
    (first, *_rest) = json.loads(listing.stdout)
    missing = boilermaker_process("dlq", "show", "999999", *shared_dead_letters.options())
    usage = boilermaker_process("dlq", "list", "--limit", "0", *shared_dead_letters.options())

    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == invoke("dlq", "list", "--json", *shared_dead_letters.options()).stdout
    assert first["sequence_number"] > 0
    assert "shutdown ran" not in listing.stderr
    assert missing.returncode == 1
    assert "no dead-lettered message with sequence number 999999" in missing.stderr
    assert "shutdown ran" not in missing.stderr
    # A command that failed before reading anything exits the usual way.
    assert usage.returncode == 2, usage.stderr
    assert "shutdown ran" in usage.stderr


def test_dry_runs_change_nothing(shared_dead_letters: DeadLetters) -> None:
    before = shared_dead_letters.counts()

    replay = invoke(
        "dlq", "replay", "--dry-run", "--reason", TASK_FAILED, *shared_dead_letters.options()
    )
    purge = invoke("dlq", "purge", "--dry-run", "--json", *shared_dead_letters.options())

    assert replay.exit_code == 0, replay.output
    assert "Would replay 2 message(s)" in replay.stdout
    assert ":replay:1" in replay.stdout
    assert purge.exit_code == 0, purge.output
    report = json.loads(purge.stdout)
    assert report["dry_run"] is True
    assert len(report["purged"]) == 5
    # Dry runs peek only: nothing moved, nothing locked.
    assert shared_dead_letters.counts() == before
    assert before.dead_lettered == 5
    assert before.active == 0


# -- replay and purge: one story on a fresh queue --------------------------------------------


def test_replay_puts_tasks_back_with_lineage_then_purge_empties_the_dlq(
    dead_letters: DeadLetters,
) -> None:
    refused = invoke("dlq", "replay", *dead_letters.options(), input="n\n")
    assert refused.exit_code == 1
    assert "Replay 5 message(s)" in refused.output
    assert "Aborted" in refused.output
    assert dead_letters.counts().dead_lettered == 5
    assert dead_letters.peek_main() == []
    originals = {o["message_id"]: o for o in listed(dead_letters, "--function", "charge")}

    replay = invoke(
        "dlq",
        "replay",
        "--function",
        "charge",
        "--rate",
        "50",
        *dead_letters.options(),
        input="y\n",
    )

    assert replay.exit_code == 0, replay.output
    assert "Replayed 2 message(s)" in replay.stdout
    copies = dead_letters.peek_main()
    assert sorted(str(c.message_id) for c in copies) == sorted(
        f"{message_id}:replay:1" for message_id in originals
    )
    for copy in copies:
        props = {text(k): text(v) for k, v in (copy.application_properties or {}).items()}
        original = originals[props[ORIGINAL_MESSAGE_ID]]
        assert props[ORIGINAL_SEQUENCE_NUMBER] == original["sequence_number"]
        assert props[DEAD_LETTER_REASON] == TASK_FAILED
        assert props[REPLAY_COUNT] == 1
        assert datetime.fromisoformat(props[REPLAYED_AT]).tzinfo is not None
        assert props["boilermaker_function"] == "charge"
        assert json.loads(b"".join(copy.body))["attempts"]["attempts"] == 0
    assert dead_letters.counts().dead_lettered == 3

    # o-1 works now; o-2 fails again and is dead-lettered with its lineage.
    dead_letters.state.broken = {"o-2"}
    dead_letters.state.runs.clear()
    dead_letters.run_worker_until(
        lambda: dead_letters.counts().dead_lettered == 4 and drained(dead_letters.counts())
    )
    assert sorted(dead_letters.state.runs) == ["o-1", "o-2"]
    (again,) = listed(dead_letters, "--function", "charge")
    assert again["lineage"]["replay_count"] == 1
    assert again["lineage"]["original_message_id"] in originals
    assert again["lineage"]["dead_letter_reason"] == TASK_FAILED

    # Purge asks first too, then removes what matches, then everything.
    refused_purge = invoke("dlq", "purge", *dead_letters.options(), input="n\n")
    assert refused_purge.exit_code == 1
    assert "Remove 4 message(s)" in refused_purge.output
    assert dead_letters.counts().dead_lettered == 4

    some = invoke("dlq", "purge", "--reason", INVALID_TASK_FORMAT, "--yes", *dead_letters.options())
    assert some.exit_code == 0, some.output
    assert "Removed 1 message(s)" in some.stdout
    assert dead_letters.counts().dead_lettered == 3

    everything = invoke("dlq", "purge", "--yes", "--json", *dead_letters.options())
    assert everything.exit_code == 0, everything.output
    assert len(json.loads(everything.stdout)["purged"]) == 3
    assert dead_letters.counts().dead_lettered == 0
