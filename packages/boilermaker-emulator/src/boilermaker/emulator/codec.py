"""Just enough of the AMQP 1.0 type encoding to handle messages as bytes.

The emulator never rebuilds a whole message: it splits the sections a client
sent, keeps the bare message (properties, application properties, body,
footer) as the bytes it received, and writes a fresh header and
message-annotations section in front of it on every delivery. That keeps the
per-message cost to a few slices and small encodes, and guarantees the body
reaches the receiver exactly as the sender encoded it.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any, NamedTuple

__all__ = [
    "APPLICATION_PROPERTIES",
    "DATA",
    "HEADER",
    "MESSAGE_ANNOTATIONS",
    "PROPERTIES",
    "CodecError",
    "Described",
    "Section",
    "Symbol",
    "Timestamp",
    "decode_value",
    "encode_application_properties",
    "encode_header",
    "encode_message_annotations",
    "map_entries",
    "skip_value",
    "split_sections",
]

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78
BODY_SECTIONS = frozenset((DATA, AMQP_SEQUENCE, AMQP_VALUE))


class CodecError(ValueError):
    """Bytes that are not a well-formed AMQP encoding."""


class Symbol(str):
    """An AMQP symbol (as opposed to a string)."""


class Timestamp(int):
    """An AMQP timestamp: milliseconds since the Unix epoch."""


class Described(NamedTuple):
    descriptor: Any
    value: Any


class Section(NamedTuple):
    """One top-level message section: its descriptor code and byte range."""

    code: int
    start: int
    end: int


_FIXED_WIDTH = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}
_U32 = struct.Struct(">I")


def skip_value(buf: bytes | memoryview, pos: int) -> int:
    """Return the offset just past the encoded value that starts at ``pos``."""
    try:
        code = buf[pos]
        pos += 1
        if code == 0x00:
            return skip_value(buf, skip_value(buf, pos))
        width = _FIXED_WIDTH.get(code >> 4)
        if width is not None:
            end = pos + width
        elif code >> 4 in (0xA, 0xC, 0xE):
            end = pos + 1 + buf[pos]
        elif code >> 4 in (0xB, 0xD, 0xF):
            end = pos + 4 + _U32.unpack_from(buf, pos)[0]
        else:
            raise CodecError(f"unknown format code 0x{code:02x}")
    except (IndexError, struct.error) as exc:
        raise CodecError("truncated value") from exc
    if end > len(buf):
        raise CodecError("truncated value")
    return end


def split_sections(buf: bytes | memoryview) -> list[Section]:
    """Split an encoded message into its sections; raise :class:`CodecError` if malformed.

    Each section must be a described value with a small-ulong descriptor in
    the message-section range (0x70-0x78); anything else is not a message.
    """
    sections: list[Section] = []
    pos = 0
    size = len(buf)
    while pos < size:
        if size - pos < 4 or buf[pos] != 0x00:
            raise CodecError("not a message section")
        if buf[pos + 1] == 0x53:
            code = buf[pos + 2]
            value_at = pos + 3
        elif buf[pos + 1] == 0x80 and size - pos >= 11:
            code = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            value_at = pos + 10
        else:
            raise CodecError("not a message section")
        if not HEADER <= code <= FOOTER:
            raise CodecError(f"unknown section 0x{code:x}")
        end = skip_value(buf, value_at)
        sections.append(Section(code, pos, end))
        pos = end
    if not sections:
        raise CodecError("empty message")
    return sections


def section_value_offset(buf: bytes | memoryview, section: Section) -> int:
    """Offset of the value inside a section (just past its descriptor)."""
    return section.start + (3 if buf[section.start + 1] == 0x53 else 10)


_S8 = struct.Struct(">b")
_S16 = struct.Struct(">h")
_S32 = struct.Struct(">i")
_S64 = struct.Struct(">q")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


def decode_value(buf: bytes | memoryview, pos: int = 0) -> tuple[Any, int]:
    """Decode the value at ``pos``; return it and the offset just past it.

    Maps become dicts, lists and arrays become lists, symbols
    :class:`Symbol`, timestamps :class:`Timestamp`, described values
    :class:`Described`. Decimal and char values come back as raw bytes.
    """
    try:
        return _decode(buf, pos)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise CodecError(f"cannot decode value at {pos}: {exc}") from exc


def _decode(buf: bytes | memoryview, pos: int) -> tuple[Any, int]:
    code = buf[pos]
    pos += 1
    if code == 0x00:
        descriptor, pos = _decode(buf, pos)
        value, pos = _decode(buf, pos)
        return Described(descriptor, value), pos
    if code == 0x40:
        return None, pos
    if code == 0x41:
        return True, pos
    if code == 0x42:
        return False, pos
    if code == 0x56:
        return buf[pos] != 0, pos + 1
    if code in (0x43, 0x44):
        return 0, pos
    if code in (0x50, 0x52, 0x53):
        return buf[pos], pos + 1
    if code == 0x51:
        return _S8.unpack_from(buf, pos)[0], pos + 1
    if code == 0x54:
        return _S8.unpack_from(buf, pos)[0], pos + 1
    if code == 0x55:
        return _S8.unpack_from(buf, pos)[0], pos + 1
    if code == 0x60:
        return _U16.unpack_from(buf, pos)[0], pos + 2
    if code == 0x61:
        return _S16.unpack_from(buf, pos)[0], pos + 2
    if code == 0x70:
        return _U32.unpack_from(buf, pos)[0], pos + 4
    if code == 0x71:
        return _S32.unpack_from(buf, pos)[0], pos + 4
    if code == 0x72:
        return _F32.unpack_from(buf, pos)[0], pos + 4
    if code == 0x80:
        return _U64.unpack_from(buf, pos)[0], pos + 8
    if code == 0x81:
        return _S64.unpack_from(buf, pos)[0], pos + 8
    if code == 0x82:
        return _F64.unpack_from(buf, pos)[0], pos + 8
    if code == 0x83:
        return Timestamp(_S64.unpack_from(buf, pos)[0]), pos + 8
    if code == 0x98:
        return uuid.UUID(bytes=bytes(buf[pos : pos + 16])), pos + 16
    if code in (0xA0, 0xA1, 0xA3, 0xB0, 0xB1, 0xB3):
        if code < 0xB0:
            size, pos = buf[pos], pos + 1
        else:
            size, pos = _U32.unpack_from(buf, pos)[0], pos + 4
        raw = bytes(buf[pos : pos + size])
        if len(raw) != size:
            raise CodecError("truncated value")
        low = code & 0x0F
        if low == 0x0:
            return raw, pos + size
        if low == 0x1:
            return raw.decode("utf-8"), pos + size
        return Symbol(raw.decode("ascii")), pos + size
    if code == 0x45:
        return [], pos
    if code in (0xC0, 0xC1, 0xD0, 0xD1):
        if code < 0xD0:
            size, count, pos = buf[pos], buf[pos + 1], pos + 2
            end = pos - 1 + size
        else:
            size, count = _U32.unpack_from(buf, pos)[0], _U32.unpack_from(buf, pos + 4)[0]
            pos += 8
            end = pos - 4 + size
        items = []
        for _ in range(count):
            item, pos = _decode(buf, pos)
            items.append(item)
        if pos != end:
            raise CodecError("compound size mismatch")
        if code & 0x0F == 0x1:
            return dict(zip(items[::2], items[1::2], strict=True)), pos
        return items, pos
    if code in (0xE0, 0xF0):
        if code == 0xE0:
            size, count, pos = buf[pos], buf[pos + 1], pos + 2
            end = pos - 1 + size
        else:
            size, count = _U32.unpack_from(buf, pos)[0], _U32.unpack_from(buf, pos + 4)[0]
            pos += 8
            end = pos - 4 + size
        return _decode_array(buf, pos, count), end
    width = _FIXED_WIDTH.get(code >> 4)
    if width is not None:
        return bytes(buf[pos : pos + width]), pos + width
    raise CodecError(f"unknown format code 0x{code:02x}")


def _decode_array(buf: bytes | memoryview, pos: int, count: int) -> list[Any]:
    element_code = buf[pos]
    if element_code == 0x00:
        raise CodecError("described arrays are not supported")
    pos += 1
    fixed = _FIXED_WIDTH.get(element_code >> 4)
    items = []
    for _ in range(count):
        if fixed is not None:
            size = fixed
        elif element_code >> 4 in (0xA, 0xC, 0xE):
            size = 1 + buf[pos]
        else:
            size = 4 + _U32.unpack_from(buf, pos)[0]
        value, _ = _decode(bytes((element_code,)) + bytes(buf[pos : pos + size]), 0)
        items.append(value)
        pos += size
    return items


def map_entries(buf: bytes | memoryview, pos: int) -> tuple[list[tuple[Any, bytes]], int]:
    """Decode a map's keys but keep each value as its raw encoding.

    Used to rewrite annotation and application-property maps without
    re-encoding values the emulator does not care about.
    """
    code = buf[pos]
    if code == 0x40:
        return [], pos + 1
    if code == 0xC1:
        count, start = buf[pos + 2], pos + 3
    elif code == 0xD1:
        count, start = _U32.unpack_from(buf, pos + 5)[0], pos + 9
    else:
        raise CodecError(f"expected a map, found 0x{code:02x}")
    entries = []
    at = start
    for _ in range(count // 2):
        key, at = decode_value(buf, at)
        value_end = skip_value(buf, at)
        entries.append((key, bytes(buf[at:value_end])))
        at = value_end
    return entries, at


# -- encoding ---------------------------------------------------------------


def encode_symbol(text: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) < 256:
        return b"\xa3" + bytes((len(raw),)) + raw
    return b"\xb3" + _U32.pack(len(raw)) + raw


def encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) < 256:
        return b"\xa1" + bytes((len(raw),)) + raw
    return b"\xb1" + _U32.pack(len(raw)) + raw


def encode_long(value: int) -> bytes:
    return b"\x81" + _S64.pack(value)


def encode_int(value: int) -> bytes:
    return b"\x71" + _S32.pack(value)


def encode_timestamp(ms: int) -> bytes:
    return b"\x83" + _S64.pack(ms)


def _encode_map(encoded_entries: list[bytes]) -> bytes:
    body = b"".join(encoded_entries)
    count = len(encoded_entries) * 2
    return b"\xd1" + _U32.pack(len(body) + 4) + _U32.pack(count) + body


def encode_header(
    durable: bool | None, priority: int | None, ttl: int | None, delivery_count: int
) -> bytes:
    """Encode a header section, always writing ``delivery-count`` (even when 0).

    The SDK reports the header's raw delivery count, so it has to be on the
    wire explicitly rather than left to the field's default.
    """
    fields = (
        (b"\x40" if durable is None else (b"\x41" if durable else b"\x42"))
        + (b"\x40" if priority is None else b"\x50" + bytes((priority & 0xFF,)))
        + (b"\x40" if ttl is None else b"\x70" + _U32.pack(ttl & 0xFFFFFFFF))
        + b"\x40"
        + b"\x70"
        + _U32.pack(delivery_count & 0xFFFFFFFF)
    )
    return b"\x00\x53\x70\xc0" + bytes((len(fields) + 1, 5)) + fields


def encode_message_annotations(entries: list[tuple[str, bytes]], raw_extra: bytes = b"") -> bytes:
    """Encode a message-annotations section from ``(symbol key, encoded value)`` pairs.

    ``raw_extra`` holds further already-encoded key/value pairs (annotations
    the sender set, kept as received).
    """
    parts = [encode_symbol(key) + value for key, value in entries]
    if raw_extra:
        parts.append(raw_extra)
    body = b"".join(parts)
    count = (len(entries) + _count_pairs(raw_extra)) * 2
    return b"\x00\x53\x72\xd1" + _U32.pack(len(body) + 4) + _U32.pack(count) + body


def _count_pairs(raw: bytes) -> int:
    pairs = 0
    pos = 0
    while pos < len(raw):
        pos = skip_value(raw, skip_value(raw, pos))
        pairs += 1
    return pairs


def encode_application_properties(entries: list[tuple[str, bytes]]) -> bytes:
    """Encode an application-properties section from ``(string key, encoded value)`` pairs."""
    body = _encode_map([encode_string(key) + value for key, value in entries])
    return b"\x00\x53\x74" + body
