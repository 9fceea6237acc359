"""The private azure-servicebus names of ``sdk_internals``: still there, still the same shape.

Each test names the internal it checks, so an SDK upgrade that moves or
reshapes one fails here by name before anything subtler breaks. The
behavioural tests run the internals against the emulator: pipelined
settlement, settlement by lock token, opening with retries off, batch sizes
from the link. And no module but ``sdk_internals`` reaches into the SDK.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageLockLostError,
    ServiceBusAuthenticationError,
    ServiceBusError,
)

from boilermaker.emulator import ServiceBusEmulator
from boilermaker.servicebus_publisher import sdk_internals
from boilermaker.servicebus_publisher.sdk_internals import DispositionLink
from tests.servicebus.conftest import wrong_key

REPO = Path(__file__).resolve().parents[2]
LOGGER = logging.getLogger(__name__)
#: The SDK under test (major, minor).
SDK_VERSION = tuple(int(p) for p in importlib.metadata.version("azure-servicebus").split(".")[:2])

#: Module-level names imported from the SDK's private packages.
PRIVATE_IMPORTS = [
    ("azure.servicebus._pyamqp._decode", "decode_frame"),
    ("azure.servicebus._pyamqp._decode", "decode_empty_frame"),
    ("azure.servicebus._common.constants", "MESSAGE_MGMT_SETTLEMENT_TERM_MAP"),
    ("azure.servicebus._pyamqp.constants", "LinkState"),
    ("azure.servicebus._pyamqp.error", "AMQPException"),
    ("azure.servicebus._pyamqp.outcomes", "Accepted"),
    ("azure.servicebus._pyamqp.outcomes", "Modified"),
    ("azure.servicebus._pyamqp.receiver", "DEFAULT_SETTLEMENT_OUTCOME_TIMEOUT"),
    ("azure.servicebus._pyamqp.receiver", "check_disposition_outcome"),
]

#: Private attribute names only ``sdk_internals`` may mention (distinctive enough to
#: grep for; generic ones such as ``_config`` or ``_link`` are checked by behaviour).
PRIVATE_ATTRIBUTES = [
    "_max_message_size_on_link",
    "_further_pull_receive_timeout",
    "_received_messages",
    "_build_received_message",
    "current_link_credit",
    "_await_settlement_outcome",
    "_pending_dispositions",
    "_received_delivery_tags",
    "_outgoing_disposition",
    "_settle_message_via_mgmt_link",
    "_amqp_transport",
    "create_servicebus_exception",
    "custom_endpoint_address",
    "_is_deferred_message",
    "_is_peeked_message",
    "_delivery_id",
    "_delivery_tag",
    "_lock_expired",
    "receive_frame",
    "do_work_async",
]

#: Our source trees that talk to the SDK.
SOURCES = [
    REPO / "packages/boilermaker-servicebus/src",
    REPO / "packages/boilermaker-core/src/boilermaker/servicebus_publisher",
    REPO / "packages/boilermaker-cli/src",
    REPO / "packages/boilermaker-results/src",
]
INTERNALS_MODULE = REPO / "packages/boilermaker-core/src/boilermaker/servicebus_publisher"
INTERNALS_MODULE = INTERNALS_MODULE / "sdk_internals.py"


def parameters(function: Any) -> list[str]:
    """Parameter names of ``function`` (``self`` left out)."""
    return [p for p in inspect.signature(function).parameters if p != "self"]


def attribute(owner: Any, path: str) -> Any:
    """``owner.a.b.c`` for ``path`` ``"a.b.c"``, failing with the internal's name."""
    value = owner
    for part in path.split("."):
        assert hasattr(value, part), (
            f"azure-servicebus internal {type(owner).__name__}.{path} is gone "
            f"({type(value).__name__} has no {part}): update sdk_internals"
        )
        value = getattr(value, part)
    return value


# -- names and signatures --------------------------------------------------------------------


def test_the_sdk_is_a_version_the_distributions_allow() -> None:
    assert (7, 15) <= SDK_VERSION < (7, 16), (
        f"azure-servicebus {SDK_VERSION} is outside >=7.15,<7.16: check sdk_internals against "
        "it, then move the range in boilermaker-core's servicebus extra"
    )


def test_the_settlement_internals_imported() -> None:
    assert sdk_internals.PIPELINING, "sdk_internals could not import the SDK's settlement names"


@pytest.mark.parametrize(
    ("module", "name"), PRIVATE_IMPORTS, ids=[f"{m}.{n}" for m, n in PRIVATE_IMPORTS]
)
def test_private_sdk_name_still_exists(module: str, name: str) -> None:
    try:
        found = importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"azure-servicebus internal module {module} is gone: {exc}")
    assert hasattr(found, name), f"azure-servicebus internal {module}.{name} is gone"


def test_check_disposition_outcome_takes_id_outcome_and_expected() -> None:
    from azure.servicebus._pyamqp.receiver import check_disposition_outcome

    assert parameters(check_disposition_outcome)[:3] == ["delivery_id", "outcome", "expected"], (
        "azure-servicebus internal _pyamqp.receiver.check_disposition_outcome changed shape"
    )


def test_settlement_outcome_timeout_is_a_number_of_seconds() -> None:
    from azure.servicebus._pyamqp.receiver import DEFAULT_SETTLEMENT_OUTCOME_TIMEOUT

    assert isinstance(DEFAULT_SETTLEMENT_OUTCOME_TIMEOUT, int | float)
    assert 0 < DEFAULT_SETTLEMENT_OUTCOME_TIMEOUT <= 300


def test_modified_outcome_has_the_fields_an_abandon_sets() -> None:
    from azure.servicebus._pyamqp.outcomes import Accepted, Modified

    assert Accepted() == ()
    fields = Modified(delivery_failed=True, undeliverable_here=False, message_annotations=None)
    assert fields.delivery_failed is True
    assert fields.undeliverable_here is False


def test_link_states_name_detached_and_error() -> None:
    from azure.servicebus._pyamqp.constants import LinkState

    assert {"DETACHED", "ERROR", "ATTACHED"} <= set(LinkState.__members__), (
        "azure-servicebus internal _pyamqp.constants.LinkState changed its members"
    )


def test_management_settlement_terms_cover_complete_and_abandon() -> None:
    from azure.servicebus._common.constants import MESSAGE_MGMT_SETTLEMENT_TERM_MAP

    assert MESSAGE_MGMT_SETTLEMENT_TERM_MAP["complete"] == "completed"
    assert MESSAGE_MGMT_SETTLEMENT_TERM_MAP["abandon"] == "abandoned"


def test_receive_link_disposition_takes_the_six_frame_fields() -> None:
    from azure.servicebus._pyamqp.aio._receiver_async import ReceiverLink

    wanted = ["first", "last", "delivery_tag", "settled", "state", "batchable"]
    assert parameters(ReceiverLink._outgoing_disposition) == wanted, (
        "azure-servicebus internal ReceiverLink._outgoing_disposition changed shape"
    )
    assert inspect.iscoroutinefunction(ReceiverLink._outgoing_disposition)


def test_connection_listen_takes_wait() -> None:
    from azure.servicebus._pyamqp.aio._connection_async import Connection

    assert "wait" in parameters(Connection.listen), (
        "azure-servicebus internal _pyamqp Connection.listen(wait=) changed shape"
    )


def test_receiver_settles_via_management_with_settlement_and_lock_tokens() -> None:
    method = attribute(ServiceBusReceiver, "_settle_message_via_mgmt_link")
    assert parameters(method)[:2] == ["settlement", "lock_tokens"], (
        "azure-servicebus internal ServiceBusReceiver._settle_message_via_mgmt_link changed shape"
    )
    assert inspect.iscoroutinefunction(method)


def test_transport_converts_exceptions_with_a_custom_endpoint() -> None:
    from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

    names = parameters(PyamqpTransport.create_servicebus_exception)
    assert names[:2] == ["logger", "exception"], names
    assert "custom_endpoint_address" in names


def test_received_message_settlement_state_is_still_where_it_was() -> None:
    lock_expired = inspect.getattr_static(ServiceBusReceivedMessage, "_lock_expired", None)
    assert isinstance(lock_expired, property), (
        "azure-servicebus internal ServiceBusReceivedMessage._lock_expired is no longer a property"
    )


def test_no_module_but_sdk_internals_reaches_into_the_sdk() -> None:
    private_import = re.compile(r"azure\.servicebus\._\w")
    names = re.compile(r"\b(" + "|".join(map(re.escape, PRIVATE_ATTRIBUTES)) + r")\b")
    offenders = []
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            if path == INTERNALS_MODULE:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if private_import.search(line) or names.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "private SDK names outside sdk_internals:\n" + "\n".join(offenders)


def test_sdk_internals_docstring_lists_every_internal() -> None:
    doc = sdk_internals.__doc__ or ""
    missing = [n for n in PRIVATE_ATTRIBUTES if n not in doc]
    missing += [f"{m}.{n}" for m, n in PRIVATE_IMPORTS if n not in doc]
    assert not missing, f"sdk_internals' docstring does not list {missing}"
    assert "7.15" in doc


# -- on the emulator ---------------------------------------------------------------------------


@pytest.fixture
async def client(servicebus_emulator: ServiceBusEmulator) -> AsyncIterator[ServiceBusClient]:
    async with ServiceBusClient.from_connection_string(
        servicebus_emulator.connection_string
    ) as made:
        yield made


async def send(client: ServiceBusClient, queue: str, count: int) -> None:
    async with client.get_queue_sender(queue) as sender:
        await sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(count)])


async def receive(receiver: ServiceBusReceiver, count: int) -> list[ServiceBusReceivedMessage]:
    got: list[ServiceBusReceivedMessage] = []
    deadline = time.monotonic() + 10
    while len(got) < count:
        assert time.monotonic() < deadline, f"received {len(got)} of {count}"
        got += await receiver.receive_messages(max_message_count=count - len(got), max_wait_time=1)
    return got


async def test_sender_link_reports_the_queues_maximum_message_size(
    client: ServiceBusClient, new_queue: Callable[..., str]
) -> None:
    queue = new_queue(max_message_size=64 * 1024)
    sender: ServiceBusSender
    async with client.get_queue_sender(queue) as sender:
        attribute(sender, "_max_message_size_on_link")
        assert sdk_internals.link_max_message_size(sender) == 64 * 1024


async def test_open_receiver_exposes_what_sdk_internals_reads(
    client: ServiceBusClient, new_queue: Callable[..., str]
) -> None:
    queue = new_queue()
    await send(client, queue, 3)
    async with client.get_queue_receiver(queue, prefetch_count=10) as receiver:
        assert isinstance(attribute(receiver, "_further_pull_receive_timeout"), float)
        assert isinstance(attribute(receiver, "_config.retry_total"), int)
        assert attribute(receiver, "_running") is True
        attribute(receiver, "_handler._received_messages.qsize")
        attribute(receiver, "_config.custom_endpoint_address")
        attribute(receiver, "_amqp_transport.create_servicebus_exception")
        assert attribute(receiver, "_await_settlement_outcome") is True
        for name in (*DispositionLink.NEEDED, "state", "_session._connection.listen"):
            attribute(receiver, f"_handler._link.{name}")
        (first,) = await receive(receiver, 1)
        for name in (
            "_settled",
            "_is_deferred_message",
            "_is_peeked_message",
            "_delivery_id",
            "_delivery_tag",
            "_lock_expired",
        ):
            attribute(first, name)
        # The other two arrive on the link's credit (prefetch): counted, handed out at once.
        deadline = time.monotonic() + 5
        while sdk_internals.prefetched_count(receiver) < 2:
            assert time.monotonic() < deadline, "prefetched messages were not counted"
            await receiver._handler.do_work_async()  # pump the link (test only)
        assert sdk_internals.prefetched_count(receiver) == 2
        rest = sdk_internals.take_prefetched(receiver, 5)
        assert sorted(str(m) for m in rest) == ["m1", "m2"]
        assert all(isinstance(m, ServiceBusReceivedMessage) for m in rest)
        assert sdk_internals.prefetched_count(receiver) == 0
        assert sdk_internals.take_prefetched(receiver, 5) == []
        for message in [first, *rest]:
            await receiver.complete_message(message)  # built as the SDK builds them
        # Credit 11 (prefetch + 1) was granted and 3 used: no grant below half of 10.
        assert attribute(receiver, "_handler._link.current_link_credit") == 8
        assert not await sdk_internals.top_up_credit(receiver, 10)
        assert await sdk_internals.top_up_credit(receiver, 20)
        assert receiver._handler._link.current_link_credit == 21  # as the SDK grants: + 1
        assert sdk_internals.shorten_further_pull(receiver, 0.005)
        assert receiver._further_pull_receive_timeout == 0.005
        assert sdk_internals.is_running(receiver)
    assert not sdk_internals.is_running(receiver)


async def test_frames_are_read_in_the_task_that_listens(
    client: ServiceBusClient, new_queue: Callable[..., str]
) -> None:
    queue = new_queue()
    receiver = client.get_queue_receiver(queue, prefetch_count=2)
    assert sdk_internals.read_handshake_back_to_back(receiver)
    async with receiver:
        connection = attribute(receiver, "_handler._connection")
        transport = attribute(connection, "_transport")
        assert callable(attribute(transport, "read"))
        assert parameters(attribute(transport, "receive_frame")) == ["timeout", "kwargs"]
        assert sdk_internals.read_frames_inline(receiver._handler)
        # Nothing arrives: the read times out without a task of its own.
        loop = asyncio.get_running_loop()
        made: list[Any] = []

        def counting_factory(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            made.append(coro)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(counting_factory)
        try:
            await connection.listen(wait=0.05)
            assert await transport.receive_frame(timeout=0.05) == (None, None)
        finally:
            loop.set_task_factory(None)
        assert made == []
        # The link reads on as before.
        await send(client, queue, 3)
        got = await receive(receiver, 3)
        assert sorted(str(m) for m in got) == ["m0", "m1", "m2"]
        for message in got:
            await receiver.complete_message(message)


async def test_a_frame_read_can_be_ended_early_and_the_link_reads_on(
    client: ServiceBusClient, new_queue: Callable[..., str]
) -> None:
    queue = new_queue()
    receiver = client.get_queue_receiver(queue, prefetch_count=4)
    assert sdk_internals.read_handshake_back_to_back(receiver)
    async with receiver:
        transport = attribute(receiver, "_handler._connection._transport")
        assert inspect.iscoroutinefunction(attribute(receiver, "_handler.do_work_async"))
        assert sdk_internals.read_frames_inline(receiver._handler)
        # A read with no time limit, on a quiet link, ends when cut short, as a
        # timed-out read ends.
        reading = asyncio.create_task(transport.receive_frame(timeout=None))
        await asyncio.sleep(0.1)
        assert not reading.done()
        assert sdk_internals.cut_reads_short(receiver)
        assert await asyncio.wait_for(reading, 10) == (None, None)
        assert sdk_internals.cut_reads_short(receiver)  # nothing under way: no effect
        # Steps of the SDK's receive loop fill the buffer; nothing was lost.
        await send(client, queue, 3)
        deadline = time.monotonic() + 10
        while sdk_internals.prefetched_count(receiver) < 3:
            assert time.monotonic() < deadline, "the link did not deliver 3 messages"
            assert await sdk_internals.pump_once(receiver)
        got = sdk_internals.take_prefetched(receiver, 3)
        assert sorted(str(m) for m in got) == ["m0", "m1", "m2"]
        for message in got:
            await receiver.complete_message(message)
    assert not sdk_internals.cut_reads_short(object())
    assert not await sdk_internals.pump_once(object())


async def test_pipelined_completes_and_abandons_are_confirmed_by_the_service(
    client: ServiceBusClient, new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    await send(client, queue, 4)
    async with client.get_queue_receiver(queue, prefetch_count=4) as receiver:
        messages = await receive(receiver, 4)
        link = DispositionLink.of(receiver)
        assert link is not None, "pipelined settlement is not available on this SDK"
        kinds: list[sdk_internals.Settlement] = ["complete", "complete", "complete", "abandon"]
        assert all(link.can_settle(m) for m in messages)
        ids = [await link.send(m, kind) for m, kind in zip(messages, kinds, strict=True)]
        await link.await_outcomes(ids, (*sdk_internals.TRANSPORT_ERRORS, ServiceBusError), LOGGER)
        assert [link.confirmed(i, kind) for i, kind in zip(ids, kinds, strict=True)] == [True] * 4
        for message in messages:
            sdk_internals.mark_settled(message)
            assert not link.can_settle(message)
    counts = servicebus_emulator.counts(queue)
    assert (counts.active, counts.locked) == (1, 0)  # the abandoned one is back


async def test_dispositions_and_a_credit_grant_written_under_a_cork_leave_in_one_write(
    client: ServiceBusClient, new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    await send(client, queue, 6)
    async with client.get_queue_receiver(queue, prefetch_count=6) as receiver:
        messages = await receive(receiver, 6)
        link = DispositionLink.of(receiver)
        assert link is not None
        writer = attribute(receiver, "_handler._connection._transport.writer")
        socket_writes: list[int] = []
        real_write = writer.transport.write

        def counting_write(data: bytes) -> None:
            socket_writes.append(len(data))
            real_write(data)

        writer.transport.write = counting_write
        errors = (*sdk_internals.TRANSPORT_ERRORS, ServiceBusError)
        # Three dispositions and a grant: one write.
        with sdk_internals.WriteCork(receiver) as cork:
            ids = [await link.send(m, "complete") for m in messages[:3]]
            assert socket_writes == []  # held until the block ends
            assert await sdk_internals.top_up_credit(receiver, 20)
        assert len(socket_writes) == 1
        await link.await_outcomes(ids, errors, LOGGER)
        assert [link.confirmed(i, "complete") for i in ids] == [True] * 3
        # flush() sends what was held at once, inside the block.
        with sdk_internals.WriteCork(receiver) as cork:
            late = [await link.send(messages[3], "complete")]
            cork.flush()
            assert len(socket_writes) == 2
            await link.await_outcomes(late, errors, LOGGER)
        assert link.confirmed(late[0], "complete")
        assert len(socket_writes) == 2
        # Without a cork: a write per disposition.
        rest = [await link.send(m, "complete") for m in messages[4:]]
        assert len(socket_writes) == 4
        await link.await_outcomes(rest, errors, LOGGER)
        assert [link.confirmed(i, "complete") for i in rest] == [True] * 2
        assert "write" not in vars(writer)  # the writer is itself again
        for message in messages:
            sdk_internals.mark_settled(message)
    counts = servicebus_emulator.counts(queue)
    assert (counts.active, counts.locked) == (0, 0)


async def test_a_disposition_the_service_refuses_is_raised_as_a_transport_error(
    client: ServiceBusClient, new_queue: Callable[..., str]
) -> None:
    queue = new_queue(lock_duration=1.0)
    await send(client, queue, 1)
    async with client.get_queue_receiver(queue) as receiver:
        (message,) = await receive(receiver, 1)
        link = DispositionLink.of(receiver)
        assert link is not None
        await asyncio.sleep(1.5)  # the lock lapses
        delivery_id = await link.send(message, "complete")
        await link.await_outcomes([delivery_id], sdk_internals.TRANSPORT_ERRORS, LOGGER)
        with pytest.raises(sdk_internals.TRANSPORT_ERRORS) as refused:
            link.confirmed(delivery_id, "complete")
        converted = sdk_internals.sdk_exception(receiver, refused.value, LOGGER)
        assert isinstance(converted, MessageLockLostError), type(converted)


async def test_settling_by_lock_token_goes_over_the_management_link(
    client: ServiceBusClient, new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    await send(client, queue, 2)
    async with client.get_queue_receiver(queue) as receiver:
        done, back = await receive(receiver, 2)
        await sdk_internals.settle_via_management(receiver, done, "complete")
        await sdk_internals.settle_via_management(receiver, back, "abandon")
        assert done._settled
        assert back._settled
    assert servicebus_emulator.counts(queue).active == 1


async def test_retries_off_opens_once_and_restores_the_retry_count(
    servicebus_emulator: ServiceBusEmulator, new_queue: Callable[..., str]
) -> None:
    queue = new_queue()
    async with ServiceBusClient.from_connection_string(
        wrong_key(servicebus_emulator.connection_string)
    ) as client:
        receiver = client.get_queue_receiver(queue)
        configured = receiver._config.retry_total
        assert configured > 0
        started = time.monotonic()
        with sdk_internals.retries_off(receiver) as took_effect:
            assert took_effect
            assert receiver._config.retry_total == 0
            with pytest.raises(ServiceBusAuthenticationError):
                await receiver.__aenter__()
        elapsed = time.monotonic() - started
        assert receiver._config.retry_total == configured
        await receiver.close()
    assert elapsed < 10, f"one attempt took {elapsed:.1f}s"
