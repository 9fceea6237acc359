"""The migration guide (docs/migrating-from-1.4.1.md) keeps up with the code.

- every name the code warns about with a DeprecationWarning is on the page;
- every member of 1.4.1's API that its users rely on (section 4 of the
  upgrade notes, /work/shared/reference/upgrade-from-1.4.1.md) has a row in
  the page's member table, marked kept / changed / deprecated.

The member list is embedded: the upgrade notes live outside the repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.docs.markdown_examples import ROOT

PAGE = ROOT / "docs" / "migrating-from-1.4.1.md"
SOURCES = sorted((ROOT / "packages").glob("*/src/boilermaker/**/*.py"))

#: 1.4.1's public members beyond its README (upgrade notes, section 4), as the
#: page's table names them.
MEMBERS_1_4_1 = {
    "TaskStatus": [
        "",
        "default",
        "succeeded",
        "finished",
        "failed",
        "finished_types",
        "failure_types",
    ],
    "TaskResultSlim": [
        "",
        "default",
        "directory_path",
        "storage_path",
        "finished",
        "succeeded",
        "failed",
    ],
    "TaskResult": ["result", "errors", "formatted_exception"],
    "Task": [
        "si",
        "default",
        "acks_early",
        "can_retry",
        "retry_task_id",
        "sequence_number",
        "diagnostic_id",
        "mark_published",
        "record_attempt",
        "get_next_delay",
        "__rshift__",
        "__lshift__",
    ],
    "RetryAttempts": ["default", "inc"],
    "TaskGraph": [
        "graph_id",
        "children",
        "fail_children",
        "edges",
        "fail_edges",
        "all_failed_callback_id",
        "results",
        "get_result",
        "get_status",
        "completed_successfully",
        "has_failures",
        "is_terminal_failed",
        "is_complete",
        "detect_stalled_tasks",
        "task_is_ready",
        "all_antecedents_succeeded",
        "all_antecedents_finished",
        "add_task",
        "add_failure_callback",
        "add_all_failed_callback",
        "graph_path",
        "storage_path",
    ],
    "BlobClientStorage": [
        "",
        "load_graph",
        "load_task_result",
        "store_task_result",
        "store_graph",
        "load_graph_slim_from_tags",
        "find_blobs_by_tags",
        "delete_blobs_batch",
        "try_acquire_lease",
        "release_lease",
    ],
    "Boilermaker": ["register_async", "renew_message_lock"],
    "Config": ["az_credential"],
    "AzureServiceBus": ["", "from_config"],
}
MEMBER_NAMES = [
    f"{owner}.{name}" if name else owner for owner, names in MEMBERS_1_4_1.items() for name in names
]
MARKS = ("kept", "changed", "deprecated")
#: A row of the member table: | `Owner.member` (...) | mark | notes |
ROW = re.compile(r"^\|\s*`([A-Za-z_][\w.]*)`[^|]*\|\s*([a-z]+)\b[^|]*\|", re.MULTILINE)


def page_text() -> str:
    return PAGE.read_text()


def member_table(text: str) -> dict[str, str]:
    """Member name -> mark, from the rows of the page's 1.4.1 member table."""
    start = text.index("### The 1.4.1 API, member by member")
    end = text.index("\n## ", start)
    return {m.group(1): m.group(2) for m in ROW.finditer(text[start:end])}


def deprecated_names() -> list[str]:
    """What the code warns about: the first argument of every ``_deprecated("...")``
    call, and the subject of every ``warnings.warn(..., DeprecationWarning)``."""
    names: list[str] = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if called == "_deprecated" and isinstance(first, ast.Constant):
                names.append(str(first.value))
            elif called == "warn" and any(
                isinstance(a, ast.Name) and a.id == "DeprecationWarning"
                for a in [*node.args[1:], *(k.value for k in node.keywords)]
            ):
                message = (
                    "".join(
                        str(part.value)
                        for part in ast.walk(first)
                        if isinstance(part, ast.Constant) and isinstance(part.value, str)
                    )
                    if first is not None
                    else ""
                )
                # "Task.msg is gone: ..." / "X is deprecated: ...": the name is what
                # comes before " is ".
                subject = message.split(" is ", 1)[0].strip()
                if subject and "{" not in subject:
                    names.append(subject)
    return names


class TestMigratingFrom141:
    """Named so that ``-k migrating`` selects these with the page's own examples."""

    def test_the_code_has_the_deprecations_this_test_looks_for(self) -> None:
        names = deprecated_names()
        assert "Task.msg" in names, names
        assert len(names) >= 5, names

    @pytest.mark.parametrize("name", deprecated_names())
    def test_every_deprecation_is_on_the_page(self, name: str) -> None:
        text = page_text()
        start = text.index("## Deprecations")
        section = text[start : text.index("\n## ", start + 1)]
        assert f"`{name}`" in section, f"{name} warns but is not in the page's Deprecations table"

    def test_the_member_table_marks_every_row(self) -> None:
        table = member_table(page_text())
        assert table, "no member table found"
        unknown = {name: mark for name, mark in table.items() if mark not in MARKS}
        assert not unknown, f"rows marked neither {MARKS}: {unknown}"

    @pytest.mark.parametrize("name", MEMBER_NAMES)
    def test_every_1_4_1_member_has_a_row(self, name: str) -> None:
        table = member_table(page_text())
        assert name in table, f"{name} (1.4.1, upgrade notes section 4) has no row in the table"

    def test_no_row_for_a_member_1_4_1_did_not_have(self) -> None:
        extra = set(member_table(page_text())) - set(MEMBER_NAMES)
        assert not extra, f"rows for names outside 1.4.1's section 4: {sorted(extra)}"

    def test_the_counts_in_the_prose_are_the_tables(self) -> None:
        text = page_text()
        marks = list(member_table(text).values())
        said = re.search(r"(\d+) are kept, (\d+) changed", text)
        assert said, "the sentence with the table's counts is gone"
        assert (int(said[1]), int(said[2])) == (marks.count("kept"), marks.count("changed"))

    @pytest.mark.parametrize("name", MEMBER_NAMES)
    def test_every_member_in_the_table_exists(self, name: str) -> None:
        """The table describes members that are there (no row for something removed)."""
        from boilermaker import Boilermaker
        from boilermaker.config import Config
        from boilermaker.retries import RetryAttempts
        from boilermaker.service_bus import AzureServiceBus
        from boilermaker.storage import BlobClientStorage
        from boilermaker.task import Task, TaskGraph, TaskResult, TaskResultSlim, TaskStatus

        owners = {
            cls.__name__: cls
            for cls in (
                Boilermaker,
                Config,
                RetryAttempts,
                AzureServiceBus,
                BlobClientStorage,
                Task,
                TaskGraph,
                TaskResult,
                TaskResultSlim,
                TaskStatus,
            )
        }
        owner, _, member = name.partition(".")
        cls = owners[owner]
        if member:
            fields = getattr(cls, "model_fields", {})
            assert hasattr(cls, member) or member in fields, f"{name} does not exist"


UPGRADE_NOTES = Path("/work/shared/reference/upgrade-from-1.4.1.md")


@pytest.mark.skipif(not UPGRADE_NOTES.is_file(), reason="the upgrade notes are outside the repo")
class TestMigratingListMatchesTheUpgradeNotes:
    """Where the upgrade notes are at hand, the embedded list is theirs, whole."""

    def section_4(self) -> str:
        text = UPGRADE_NOTES.read_text()
        start = text.index("## 4.")
        return text[start : text.index("\n## ", start + 1)]

    def test_every_embedded_member_is_named_in_section_4(self) -> None:
        section = self.section_4()
        operators = {"__rshift__": "a >> b", "__lshift__": "a << b"}
        for name in MEMBER_NAMES:
            member = name.rpartition(".")[2]
            assert operators.get(member, member) in section, name

    def test_every_owner_of_section_4_is_embedded(self) -> None:
        owners = set(re.findall(r"^- `(\w+)", self.section_4(), re.MULTILINE))
        assert owners <= set(MEMBERS_1_4_1), owners - set(MEMBERS_1_4_1)
