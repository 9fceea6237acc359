"""TaskStatus values and groups, and the result models built on them."""

from __future__ import annotations

from boilermaker.task import TaskResult, TaskResultSlim, TaskStatus
from boilermaker.task.status import TaskFailureResult


def test_status_values_are_the_lowercase_strings_stored_in_blobs() -> None:
    assert {s.name: s.value for s in TaskStatus} == {
        "Pending": "pending",
        "Scheduled": "scheduled",
        "Started": "started",
        "Success": "success",
        "Failure": "failure",
        "Retry": "retry",
        "RetriesExhausted": "retries_exhausted",
        "Deadlettered": "deadlettered",
    }
    assert TaskStatus("retries_exhausted") is TaskStatus.RetriesExhausted


def test_finished_and_failed_groups() -> None:
    finished = {
        TaskStatus.Success,
        TaskStatus.Failure,
        TaskStatus.RetriesExhausted,
        TaskStatus.Deadlettered,
    }
    assert TaskStatus.finished_types() == finished
    assert TaskStatus.failure_types() == finished - {TaskStatus.Success}
    for status in TaskStatus:
        assert status.finished == (status in finished)
        assert status.failed == (status in finished and status is not TaskStatus.Success)
        assert status.succeeded == (status is TaskStatus.Success)


def test_results_round_trip_and_slim_ignores_extra_fields() -> None:
    result = TaskResult(
        task_id="t1",  # type: ignore[arg-type]
        graph_id="g1",  # type: ignore[arg-type]
        status=TaskStatus.Failure,
        result={"rows": [1, 2]},
        errors=["boom"],
        formatted_exception="Traceback ...",
    )
    again = TaskResult.model_validate_json(result.model_dump_json())
    assert again == result
    slim = TaskResultSlim.model_validate_json(result.model_dump_json())
    assert (slim.task_id, slim.graph_id, slim.status) == ("t1", "g1", TaskStatus.Failure)
    assert '"status":"failure"' in result.model_dump_json()


def test_task_failure_result_carries_a_reason() -> None:
    assert TaskFailureResult().reason == "task returned TaskFailureResult"
    failure = TaskFailureResult("quota exceeded")
    assert failure.reason == "quota exceeded"
    assert "quota exceeded" in repr(failure)
