"""Blob index tags: query expressions, and the copy kept in metadata for cheap reads.

Azure returns a blob's index tags only through a separate Get Blob Tags call,
while metadata comes back with every download. So every write stores the tags
twice, atomically in the same Put Blob: as index tags (for ``find_by_tags``)
and as one metadata entry (so ``read`` returns them without a second request).
A blob written by someone else (the published library, a person) has no copy;
``read`` then falls back to Get Blob Tags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

#: Metadata entry holding the JSON copy of a blob's index tags.
TAGS_METADATA_KEY = "boilermaker_tags"

#: Azure's limits on blob index tags.
MAX_TAGS = 10
MAX_KEY_LENGTH = 128
MAX_VALUE_LENGTH = 256
_TAG_CHARS = re.compile(r"[A-Za-z0-9 +\-./:=_]*")
ALLOWED_CHARACTERS = "letters, digits, space and + - . / : = _"


def tag_problem(key: str, value: str) -> str | None:
    """Why Azure would refuse this tag, or None if it is valid."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        return f"tag name {key!r} must be 1-{MAX_KEY_LENGTH} characters"
    if len(value) > MAX_VALUE_LENGTH:
        return f"tag {key!r} has a value longer than {MAX_VALUE_LENGTH} characters"
    if not _TAG_CHARS.fullmatch(key):
        return f"tag name {key!r} may only contain {ALLOWED_CHARACTERS}"
    if not _TAG_CHARS.fullmatch(value):
        return f"tag {key!r} has value {value!r}; tag values may only contain {ALLOWED_CHARACTERS}"
    return None


def check_tags(tags: Mapping[str, str], blob_name: str) -> None:
    """Raise ValueError, naming the blob and the tag, if Azure would refuse these tags."""
    if len(tags) > MAX_TAGS:
        raise ValueError(f"blob {blob_name}: at most {MAX_TAGS} index tags, got {len(tags)}")
    for key, value in tags.items():
        problem = tag_problem(key, value)
        if problem:
            raise ValueError(f"blob {blob_name}: {problem}")


def can_match(tags: Mapping[str, str]) -> bool:
    """Whether any blob could carry all of these tags (i.e. all are valid tags)."""
    return all(tag_problem(str(k), str(v)) is None for k, v in tags.items())


def tag_filter(tags: Mapping[str, str]) -> str:
    """A Find Blobs by Tags expression matching blobs that carry all of ``tags``.

    Names are double-quoted and values single-quoted, each quote inside
    doubled, so no key or value can change the expression's meaning.
    """
    if not tags:
        raise ValueError("a tag filter needs at least one tag")
    clauses = []
    for key, value in sorted(tags.items()):
        name = str(key).replace('"', '""')
        literal = str(value).replace("'", "''")
        clauses.append(f"\"{name}\" = '{literal}'")
    return " AND ".join(clauses)


def tags_to_metadata(tags: Mapping[str, str]) -> dict[str, str]:
    """Metadata carrying a copy of ``tags`` (ASCII, safe for an HTTP header)."""
    if not tags:
        return {}
    doc = json.dumps(dict(tags), separators=(",", ":"), sort_keys=True)
    return {TAGS_METADATA_KEY: quote(doc, safe="")}


def tags_from_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    """The tags copied into metadata, or None if the blob has no (readable) copy."""
    if not metadata:
        return None
    raw = metadata.get(TAGS_METADATA_KEY)
    if raw is None:
        return None
    try:
        doc = json.loads(unquote(raw))
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    return {str(k): str(v) for k, v in doc.items()}
