"""Shared Access Signature tokens: verification (and generation, for tests and tools).

A token reads ``SharedAccessSignature sr=<uri>&sig=<signature>&se=<expiry>&skn=<key name>``.
The signature is the base64 HMAC-SHA256, keyed with the policy key (its
UTF-8 bytes, not base64-decoded), over ``quote_plus(uri) + "\\n" + expiry``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, quote_plus, unquote_plus, urlencode

__all__ = ["TokenError", "VerifiedToken", "generate_sas_token", "verify_sas_token"]

_PREFIX = "SharedAccessSignature "


class TokenError(Exception):
    """A token that does not grant access; ``status`` is the CBS status code to answer."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


@dataclass(frozen=True)
class VerifiedToken:
    """The parts of a token that verified."""

    audience: str
    key_name: str
    expires_at: int


def _sign(key: str, audience: str, expiry: str) -> bytes:
    message = f"{quote_plus(audience)}\n{expiry}".encode()
    return base64.b64encode(hmac.new(key.encode("utf-8"), message, hashlib.sha256).digest())


def generate_sas_token(audience: str, key_name: str, key: str, expiry: int | None = None) -> str:
    """Make a token for ``audience`` signed with ``key`` (valid one hour by default)."""
    se = str(int(expiry if expiry is not None else time.time() + 3600))
    fields = {"sr": audience, "sig": _sign(key, audience, se), "se": se, "skn": key_name}
    return _PREFIX + urlencode(fields)


def verify_sas_token(
    token: str | bytes, key_name: str, key: str, *, now: float | None = None
) -> VerifiedToken:
    """Check ``token`` against the namespace's key; raise :class:`TokenError` if it is not valid.

    Status codes follow Service Bus: 401 for a malformed, wrongly signed or
    expired token, 401 too for an unknown key name.
    """
    if isinstance(token, bytes):
        try:
            token = token.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenError(401, "InvalidToken: the token is not UTF-8 text") from exc
    if not token.startswith(_PREFIX):
        raise TokenError(401, "InvalidToken: not a SharedAccessSignature token")
    parsed = parse_qs(token[len(_PREFIX) :], keep_blank_values=True)
    fields = {name: values[0] for name, values in parsed.items() if values}
    missing = [name for name in ("sr", "sig", "se", "skn") if name not in fields]
    if missing:
        raise TokenError(401, f"InvalidToken: missing {', '.join(missing)}")
    # The SDK quote_plus-encodes the key name before url-encoding the token.
    presented_name = unquote_plus(fields["skn"])
    if presented_name != key_name:
        raise TokenError(401, f"InvalidSignature: unknown key name {presented_name!r}")
    expiry = fields["se"]
    try:
        expires_at = int(expiry)
    except ValueError as exc:
        raise TokenError(401, "InvalidToken: se is not an integer") from exc
    audience = fields["sr"]
    presented = fields["sig"].encode("utf-8")
    candidates = {audience, audience.lower()}
    if not any(hmac.compare_digest(_sign(key, uri, expiry), presented) for uri in candidates):
        raise TokenError(401, "InvalidSignature: the token has an invalid signature")
    if expires_at <= (time.time() if now is None else now):
        raise TokenError(401, "ExpiredToken: the token has expired")
    return VerifiedToken(audience=audience, key_name=presented_name, expires_at=expires_at)
