"""The server side of the AMQP SASL layer: ANONYMOUS and PLAIN.

Proton's built-in SASL (no Cyrus) cannot authenticate PLAIN as a server, so
the emulator negotiates SASL itself before handing the byte stream to
proton: it answers the SASL protocol header with the mechanisms it offers,
reads the client's ``sasl-init`` and replies with a ``sasl-outcome``. What
follows (the AMQP protocol header onwards) goes to proton unchanged.

ANONYMOUS always succeeds (Service Bus clients then authorize with a CBS
token). PLAIN succeeds when the user is the namespace's key name and the
password its key, which also authorizes the connection.

A SASL frame may not be larger than :data:`MAX_SASL_FRAME_SIZE`: a peer that
declares a bigger one fails at once instead of making the emulator buffer
what it announced. Bytes are parsed in place, so a stream of tiny frames
costs time in proportion to its length.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import codec

__all__ = ["AMQP_HEADER", "MAX_SASL_FRAME_SIZE", "SASL_HEADER", "SaslHandshake"]

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
_MECHANISMS = 0x40
_INIT = 0x41
_OUTCOME = 0x44
_OK = 0
_AUTH_FAILED = 1
_SYS_PERM = 3
#: Largest SASL frame accepted. AMQP sets 512 bytes for frames sent before
#: the max-frame-size is agreed; this leaves room for long PLAIN credentials.
MAX_SASL_FRAME_SIZE = 4096
_FRAME = struct.Struct(">IBBH")


def _sasl_frame(descriptor: int, fields: bytes, count: int) -> bytes:
    body = b"\x00\x53" + bytes((descriptor,)) + b"\xc0" + bytes((len(fields) + 1, count)) + fields
    return _FRAME.pack(8 + len(body), 2, 1, 0) + body


def _mechanisms_frame(mechanisms: tuple[str, ...]) -> bytes:
    elements = b"".join(bytes((len(m),)) + m.encode("ascii") for m in mechanisms)
    array = b"\xe0" + bytes((len(elements) + 2, len(mechanisms))) + b"\xa3" + elements
    return _sasl_frame(_MECHANISMS, array, 1)


def _outcome_frame(code: int) -> bytes:
    return _sasl_frame(_OUTCOME, b"\x50" + bytes((code,)), 1)


class SaslHandshake:
    """Negotiates SASL on one connection, fed with the bytes the client sends.

    Args:
        verify_plain: ``(user, password) -> bool`` for the PLAIN mechanism.
    """

    MECHANISMS = ("ANONYMOUS", "PLAIN")

    def __init__(self, verify_plain: Callable[[str, str], bool]) -> None:
        self.verify_plain = verify_plain
        self.done = False
        self.failed = False
        self.mechanism: str | None = None
        self.user: str | None = None
        self.authorized = False
        self._buffer = b""
        self._header_seen = False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Consume client bytes; return (bytes to send back, bytes left over for AMQP).

        Once :attr:`done`, everything after the SASL exchange is left over.
        After a failure (:attr:`failed`) the connection should be closed once
        the reply is sent.
        """
        if self.done:
            return b"", data
        self._buffer += data
        reply = b""
        if not self._header_seen:
            if len(self._buffer) < 8:
                return b"", b""
            header, self._buffer = self._buffer[:8], self._buffer[8:]
            if header == AMQP_HEADER:
                # No SASL layer at all: treat as anonymous.
                self.done = True
                self.mechanism = None
                rest, self._buffer = header + self._buffer, b""
                return b"", rest
            if header != SASL_HEADER:
                self.failed = self.done = True
                return SASL_HEADER, b""
            self._header_seen = True
            reply += SASL_HEADER + _mechanisms_frame(self.MECHANISMS)
        buffer = self._buffer
        at = 0
        while len(buffer) - at >= 8 and not self.done:
            size, doff, frame_type, _ = _FRAME.unpack_from(buffer, at)
            if size < 8 or size > MAX_SASL_FRAME_SIZE or doff < 2 or doff * 4 > size:
                self.failed = self.done = True
                reply += _outcome_frame(_SYS_PERM)
                break
            if len(buffer) - at < size:
                break
            frame_start, at = at, at + size
            if frame_type != 1 or size == doff * 4:
                continue  # empty frame (heartbeat) or not SASL: ignore
            reply += self._on_frame(buffer[frame_start + doff * 4 : at])
        self._buffer = buffer[at:] if at else buffer
        rest = b""
        if self.done and not self.failed:
            rest, self._buffer = self._buffer, b""
        return reply, rest

    def _on_frame(self, body: bytes) -> bytes:
        try:
            value, _ = codec.decode_value(body)
        except codec.CodecError:
            self.failed = self.done = True
            return _outcome_frame(_AUTH_FAILED)
        if not isinstance(value, codec.Described) or value.descriptor != _INIT:
            self.failed = self.done = True
            return _outcome_frame(_AUTH_FAILED)
        fields = (list(value.value) if isinstance(value.value, list) else []) + [None, None]
        mechanism, response = str(fields[0] or ""), fields[1]
        self.mechanism = mechanism
        self.done = True
        if mechanism == "ANONYMOUS":
            return _outcome_frame(_OK)
        if mechanism == "PLAIN" and isinstance(response, bytes):
            parts = response.split(b"\x00")
            if len(parts) == 3:
                user, password = (
                    parts[1].decode("utf-8", "replace"),
                    parts[2].decode("utf-8", "replace"),
                )
                if self.verify_plain(user, password):
                    self.user = user
                    self.authorized = True
                    return _outcome_frame(_OK)
        self.failed = True
        return _outcome_frame(_AUTH_FAILED)
