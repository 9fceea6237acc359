"""A broker wrapper for tests: an in-memory broker whose sends fail on cue."""

from __future__ import annotations

from collections.abc import Sequence

from boilermaker.broker import OutgoingMessage, ReceiveMode, SubQueue
from boilermaker.memory import InMemoryBroker, InMemoryReceiver


class FlakyBroker:
    """An in-memory broker whose ``send`` fails as told, recording every call."""

    def __init__(self, inner: InMemoryBroker, failures: Sequence[BaseException] = ()) -> None:
        self.inner = inner
        self.failures = list(failures)
        #: Raised by every send while set (a broker outage).
        self.always: BaseException | None = None
        self.fail_on_call: dict[int, BaseException] = {}
        self.calls: list[list[OutgoingMessage]] = []

    @property
    def queue_name(self) -> str | None:
        return self.inner.queue_name

    @property
    def max_message_size(self) -> int:
        return self.inner.max_message_size

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        self.calls.append(list(messages))
        failure = self.always or self.fail_on_call.pop(len(self.calls), None)
        if failure is None and self.failures:
            failure = self.failures.pop(0)
        if failure is not None:
            raise failure
        return await self.inner.send(messages)

    async def cancel_scheduled(self, sequence_numbers: Sequence[int]) -> None:
        await self.inner.cancel_scheduled(sequence_numbers)

    def receiver(
        self,
        *,
        prefetch: int = 0,
        sub_queue: SubQueue = SubQueue.Main,
        receive_mode: ReceiveMode = ReceiveMode.PeekLock,
    ) -> InMemoryReceiver:
        return self.inner.receiver(
            prefetch=prefetch, sub_queue=sub_queue, receive_mode=receive_mode
        )

    async def close(self) -> None:
        await self.inner.close()
