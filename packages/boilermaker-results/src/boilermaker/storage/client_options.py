"""How the store's SDK client is set up: retries, timeouts, proxies.

The SDK's defaults suit batch jobs, not a worker that must notice an outage:
its retry policy waits 15 s, then 18 s, then 24 s before giving up. Here a few
quick retries surface a dead endpoint within seconds, and a connection attempt
gives up after 10 s. Callers can still pass any SDK client keyword.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from azure.storage.blob.aio import ExponentialRetry

# Which variables name a proxy is defined once, beside the SDK-free reader's HTTP client.
from boilermaker.storage.http_connection import PROXY_VARIABLES, proxy_configured

__all__ = ["DEFAULT_CONNECTION_TIMEOUT", "DEFAULT_RETRY", "client_options", "proxy_configured"]

_PROXY_VARIABLES = PROXY_VARIABLES

#: Retry settings: a few quick retries, so an outage surfaces in seconds, not minutes
#: (the SDK's own default waits 15 s, then 18 s, then 24 s).
DEFAULT_RETRY: dict[str, Any] = {
    "retry_total": 3,
    "initial_backoff": 1,
    "increment_base": 2,
    "random_jitter_range": 1,
}
_RETRY_OPTIONS = frozenset(
    {
        "retry_total",
        "retry_connect",
        "retry_read",
        "retry_status",
        "initial_backoff",
        "increment_base",
        "random_jitter_range",
        "retry_to_secondary",
    }
)
#: Seconds to wait for a TCP connection (the SDK's default is 20).
DEFAULT_CONNECTION_TIMEOUT = 10


def client_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """SDK client keyword arguments with this store's retry, timeout and proxy defaults.

    Retry settings given (``retry_total=0``, ``initial_backoff=...``) adjust the
    default ``ExponentialRetry``; a ``retry_policy`` replaces it.

    The HTTP session reads proxy settings from the environment only when a
    proxy variable is set (or ``use_env_settings=True`` is passed): otherwise
    aiohttp would look up ``~/.netrc`` and the proxy variables in a worker
    thread on every request, which costs more than the request itself here.
    """
    opts = dict(options)
    retry = {key: opts.pop(key) for key in _RETRY_OPTIONS if key in opts}
    if "retry_policy" not in opts:
        opts["retry_policy"] = ExponentialRetry(**{**DEFAULT_RETRY, **retry})
    elif retry:
        raise TypeError(f"pass either retry_policy or retry settings {sorted(retry)}, not both")
    opts.setdefault("connection_timeout", DEFAULT_CONNECTION_TIMEOUT)
    opts.setdefault("use_env_settings", proxy_configured())
    return opts
