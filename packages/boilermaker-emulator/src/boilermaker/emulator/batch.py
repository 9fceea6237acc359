"""Splitting a batch transfer (message format ``0x80013700``) into its messages.

The SDK sends a ``ServiceBusMessageBatch`` (and a list passed to
``send_messages``) as one transfer whose message format is ``0x80013700``:
an envelope with optional annotations and properties, followed by one data
section per message, each holding a complete encoded message. Proton's
Python binding does not expose the message format, so a batch is recognised
by its shape: no header, only data sections as body, and every data section a
well-formed message of its own.
"""

from __future__ import annotations

from . import codec

__all__ = ["split_batch"]


def split_batch(data: bytes, sections: list[codec.Section]) -> list[bytes] | None:
    """Return the encoded messages of a batch transfer, or ``None`` if it is a single message."""
    if sections[0].code == codec.HEADER:
        return None
    bodies = [s for s in sections if s.code in codec.BODY_SECTIONS]
    if not bodies or any(s.code != codec.DATA for s in bodies):
        return None
    messages: list[bytes] = []
    for section in bodies:
        value_at = codec.section_value_offset(data, section)
        code = data[value_at]
        if code == 0xA0:
            start = value_at + 2
        elif code == 0xB0:
            start = value_at + 5
        else:
            return None
        inner = data[start : section.end]
        try:
            inner_sections = codec.split_sections(inner)
        except codec.CodecError:
            return None
        if not any(s.code in codec.BODY_SECTIONS for s in inner_sections):
            return None
        messages.append(bytes(inner))
    return messages
