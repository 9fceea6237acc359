"""A storage account's blob service as a connection string names it, and how requests prove
who sends them: Shared Key signatures or a shared access signature (SAS).

:meth:`BlobAccount.from_connection_string` reads the same strings as the Azure
SDK's ``ContainerClient.from_connection_string`` (so as
:meth:`boilermaker.storage.BlobClientStorage.from_connection_string`), with the
same meaning: ``Key=value`` pairs separated by ``;``, keys in any case,
``UseDevelopmentStorage=true`` for the local emulator, the endpoint from
``BlobEndpoint`` or else built from ``DefaultEndpointsProtocol``,
``AccountName`` and ``EndpointSuffix``; an ``AccountName`` and ``AccountKey``
sign with Shared Key, else a ``SharedAccessSignature`` is appended to every
request, else requests are anonymous. Only the standard library is used, and
no secret is ever part of a ``repr`` or an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from boilermaker.redact import redact_url

#: The local emulator's well-known development account (Azurite accepts it).
DEVELOPMENT_ACCOUNT_NAME = "devstoreaccount1"
DEVELOPMENT_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
#: Where ``UseDevelopmentStorage=true`` points, as for the Azure SDK.
DEVELOPMENT_BLOB_ENDPOINT = f"http://127.0.0.1:10000/{DEVELOPMENT_ACCOUNT_NAME}"
#: The endpoint suffix of the public Azure cloud.
DEFAULT_ENDPOINT_SUFFIX = "core.windows.net"

#: The request headers whose values the Shared Key string-to-sign lists, in its order.
_SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)

_EXAMPLE = "e.g. DefaultEndpointsProtocol=https;AccountName=NAME;AccountKey=KEY"


def _settings(connection_string: str) -> dict[str, str]:
    """The ``Key=value`` pairs (keys upper-cased), or ValueError naming what is wrong."""
    text = connection_string.strip().rstrip(";")
    if not text:
        raise ValueError(f"the connection string is empty ({_EXAMPLE})")
    settings: dict[str, str] = {}
    for position, segment in enumerate(text.split(";"), start=1):
        key, equals, value = segment.partition("=")
        if not equals or not key.strip():
            # The segment itself is not shown: it may be part of a key.
            raise ValueError(
                f"the connection string is malformed: part {position} is not a Key=value pair "
                f"(parts are separated by ';', {_EXAMPLE})"
            )
        settings[key.strip().upper()] = value.strip()
    return settings


def _account_from_url(url: str) -> str | None:
    """The account name a blob endpoint URL shows, as the Azure SDK reads it."""
    parts = urlsplit(url)
    host = parts.netloc
    if ".blob.core." in host:
        return host.split(".blob.core.", 1)[0] or None
    if host.startswith(("localhost", "127.0.0.1")):
        return parts.path.strip("/") or None
    return None


@dataclass(frozen=True, slots=True)
class BlobAccount:
    """Where a storage account's blob service is, and the credential requests carry.

    ``endpoint`` is the blob service URL without a trailing ``/`` (for the
    emulator it has the account as its path: ``http://127.0.0.1:10000/devstoreaccount1``).
    """

    endpoint: str
    account_name: str | None = None
    account_key: bytes | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"the blob endpoint {redact_url(self.endpoint)!r} is not an http(s) URL "
                "(like https://ACCOUNT.blob.core.windows.net)"
            )
        if self.account_key is not None and not self.account_name:
            raise ValueError("an account key needs the account's name (AccountName=...)")

    @classmethod
    def from_connection_string(cls, connection_string: str) -> BlobAccount:
        """The account a connection string names; ValueError (never showing a key) if it
        is malformed or names no blob endpoint."""
        settings = _settings(connection_string)
        if settings.get("USEDEVELOPMENTSTORAGE", "").lower() == "true":
            return cls(
                DEVELOPMENT_BLOB_ENDPOINT,
                DEVELOPMENT_ACCOUNT_NAME,
                account_key=base64.b64decode(DEVELOPMENT_ACCOUNT_KEY),
            )
        name = settings.get("ACCOUNTNAME") or None
        endpoint = settings.get("BLOBENDPOINT")
        if not endpoint:
            if settings.get("BLOBSECONDARYENDPOINT"):
                raise ValueError(
                    "the connection string names only a secondary blob endpoint "
                    "(BlobSecondaryEndpoint); give BlobEndpoint=URL too"
                )
            if not name:
                raise ValueError(
                    "the connection string names no blob endpoint: give BlobEndpoint=URL, "
                    f"or AccountName=NAME (with EndpointSuffix=...) ({_EXAMPLE})"
                )
            protocol = settings.get("DEFAULTENDPOINTSPROTOCOL")
            suffix = settings.get("ENDPOINTSUFFIX")
            if protocol and suffix:
                endpoint = f"{protocol}://{name}.blob.{suffix}"
            else:
                # As the Azure SDK does: without both, https on the given (or public) suffix.
                endpoint = f"https://{name}.blob.{suffix or DEFAULT_ENDPOINT_SUFFIX}"
        parts = urlsplit(endpoint)
        endpoint = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
        key_text = settings.get("ACCOUNTKEY")
        if name and key_text:
            return cls(endpoint, name, account_key=_decode_key(key_text))
        sas = settings.get("SHAREDACCESSSIGNATURE", "").lstrip("?") or None
        return cls(endpoint, _account_from_url(endpoint) or name, sas_token=sas)

    @property
    def signs_with_shared_key(self) -> bool:
        """Whether requests carry a Shared Key ``Authorization`` header."""
        return self.account_key is not None

    def authorization(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
    ) -> str:
        """The ``Authorization`` header value for a request, signed with the account key.

        ``path`` is the request's URL path as sent (percent-encoded), ``query``
        its parameters (not encoded), ``headers`` every header it sends.
        """
        if self.account_key is None or self.account_name is None:
            raise ValueError("Shared Key signing needs an account name and key")
        text = string_to_sign(self.account_name, method, path, query, headers)
        digest = hmac.new(self.account_key, text.encode("utf-8"), hashlib.sha256).digest()
        return f"SharedKey {self.account_name}:{base64.b64encode(digest).decode('ascii')}"


def _decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError("the connection string's AccountKey is not a base64 account key")
    return key


def string_to_sign(
    account_name: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
) -> str:
    """What a Shared Key signature signs, for the Blob service (version 2009-09-19 and later).

    The verb, the standard headers' values (a zero ``Content-Length`` counts as
    empty), every ``x-ms-`` header as ``name:value`` sorted by name, then the
    canonicalized resource: ``/account`` followed by the encoded URL path (for
    an emulator's path-style URL that path starts with the account again) and
    each query parameter as ``\\nname:value[,value]``, names lower-cased and sorted.
    """
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    if lowered.get("content-length") == "0":
        del lowered["content-length"]
    lines = [method.upper(), *(lowered.get(name, "") for name in _SIGNED_HEADERS)]
    canonical_headers = "".join(
        f"{name}:{lowered[name]}\n" for name in sorted(lowered) if name.startswith("x-ms-")
    )
    values: dict[str, list[str]] = {}
    for name, value in query:
        values.setdefault(name.lower(), []).append(value)
    canonical_query = "".join(
        f"\n{name}:{','.join(sorted(values[name]))}" for name in sorted(values)
    )
    resource = f"/{account_name}{path}{canonical_query}"
    return "\n".join(lines) + "\n" + canonical_headers + resource
