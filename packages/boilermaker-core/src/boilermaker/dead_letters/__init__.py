"""Dead-letter tooling: list, replay and purge a queue's dead-letter sub-queue.

Works on any :class:`~boilermaker.broker.Broker` (``InMemoryBroker``,
``AzureServiceBus``), through the dead-letter sub-queue's receiver only.

- :meth:`DeadLetterQueue.list` **peeks**: it never locks a message, so it is
  safe beside running workers and other tools.
- :meth:`DeadLetterQueue.replay` and :meth:`DeadLetterQueue.purge` act on the
  messages a peek found matching (the same ones ``list`` shows with the same
  filters, so a dry run predicts the real run). They receive with peek-lock;
  a message is only completed after its copy was sent (replay), and anything
  not acted on goes back to the dead-letter queue. Messages that do not match
  but are received on the way stay locked until the pass ends, so one pass
  never sees a message twice, then are abandoned.

Nothing is lost, but replay is at-least-once: if the tool dies (or a lock
lapses) after sending a copy and before completing the original, the
original stays dead-lettered and a later replay sends it again, with the same
replay message id, so duplicate detection on the queue drops it.

Lineage rides in application properties of the copy (``boilermaker_original_*``,
``boilermaker_dead_letter_reason``, ``boilermaker_replay_count``,
``boilermaker_replayed_at``). The original id and sequence number are those of
the first dead-lettered message; a copy replayed again keeps them and counts up.

**Graph tasks.** A graph node whose message was dead-lettered has a finished
record (``Failure``, ``RetriesExhausted``, ``Deadlettered``) and dispatch has
already told its dependents. Resending its message as it is would only re-run
its continuation, never the task. So a graph task is replayed only when a
:class:`~boilermaker.graph_dispatch.GraphRuntime` is given
(``DeadLetterQueue(broker, graphs=app.graphs)``, the app having a results
store): its record is reset to ``Scheduled`` before the copy is sent, and the
node runs again. A node that had already succeeded is not reset (its copy
just repeats the continuation, as a redelivery would). Dependents that were
skipped because the node failed stay skipped: replay re-runs the node, it
does not resume the part of the graph that was given up. Without a graph
runtime, graph tasks are reported as skipped and stay in the dead-letter queue.
"""

from boilermaker.dead_letters.queue import DeadLetterQueue
from boilermaker.dead_letters.records import (
    DEAD_LETTER_REASON,
    GRAPH_NEEDS_RUNTIME,
    ORIGINAL_MESSAGE_ID,
    ORIGINAL_SEQUENCE_NUMBER,
    REPLAY_COUNT,
    REPLAYED_AT,
    DeadLetter,
    DeadLetterFilter,
    DecodedTask,
    Lineage,
)
from boilermaker.dead_letters.reports import MessageOutcome, PurgeReport, ReplayReport

__all__ = [
    "DEAD_LETTER_REASON",
    "GRAPH_NEEDS_RUNTIME",
    "ORIGINAL_MESSAGE_ID",
    "ORIGINAL_SEQUENCE_NUMBER",
    "REPLAYED_AT",
    "REPLAY_COUNT",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "DecodedTask",
    "Lineage",
    "MessageOutcome",
    "PurgeReport",
    "ReplayReport",
]
