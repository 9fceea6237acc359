"""In-memory broker and results store with Service Bus and blob semantics."""

from boilermaker.memory.broker import InMemoryBroker, InMemoryReceiver, QueueCounts
from boilermaker.memory.results_store import InMemoryResultsStore

__all__ = ["InMemoryBroker", "InMemoryReceiver", "InMemoryResultsStore", "QueueCounts"]
