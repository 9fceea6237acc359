"""The worker engine: concurrent, lock-aware task execution over the Broker protocol."""

from boilermaker.worker.dead_letter import (
    EXPECTATION_FAILED,
    INVALID_TASK_FORMAT,
    PROCESSING_ERROR,
    TASK_FAILED,
)
from boilermaker.worker.engine import Worker
from boilermaker.worker.settings import WorkerSettings, WorkerStats

__all__ = [
    "EXPECTATION_FAILED",
    "INVALID_TASK_FORMAT",
    "PROCESSING_ERROR",
    "TASK_FAILED",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
]
