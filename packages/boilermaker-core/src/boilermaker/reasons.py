"""The dead-letter reasons Boilermaker writes into the broker's reason field.

Tools filter on them (``boilermaker dlq list --reason ...``); the description
field says what happened, in a bounded number of characters. Which outcome
gets which reason is decided in :mod:`boilermaker.worker.verdict`.
"""

#: The body could not be read as a task.
INVALID_TASK_FORMAT = "InvalidTaskFormat"
#: This worker cannot serve the task: its function is not registered, or it needs
#: something the worker does not have (a results store for a graph task).
EXPECTATION_FAILED = "ExpectationFailed"
#: The task raised (or returned TaskFailureResult) and does not retry.
TASK_FAILED = "TaskFailed"
#: The task asked for a retry (or ran past its time limit) but had used all its tries.
PROCESSING_ERROR = "ProcessingError"
#: The task ran, but what must follow it (its retry, chain callback, result or graph
#: continuation) cannot be built or written, so running it again would not help.
FOLLOW_UP_FAILED = "FollowUpFailed"
#: The broker gave up after too many deliveries (set by the broker, not the worker).
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"

#: The reasons the worker writes.
REASONS = (INVALID_TASK_FORMAT, EXPECTATION_FAILED, TASK_FAILED, PROCESSING_ERROR, FOLLOW_UP_FAILED)
