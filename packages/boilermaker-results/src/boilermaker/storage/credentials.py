"""The default Azure credential for the blob results store.

Production uses ``DefaultAzureCredential`` (environment, workload identity,
Azure CLI, ...). Managed identity is left out unless the environment variable
``AZURE_CREDENTIAL_INCLUDE_MSI`` is truthy, as in the published library: on
machines without it, probing the metadata endpoint only adds a slow timeout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from boilermaker.config import env_var

if TYPE_CHECKING:
    from azure.identity.aio import DefaultAzureCredential

INCLUDE_MSI_ENV = env_var("azure_credential_include_msi")

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"", "0", "false", "f", "no", "n", "off"})


def include_managed_identity(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``AZURE_CREDENTIAL_INCLUDE_MSI`` asks for managed identity.

    Raises ValueError, naming the variable, for a value that is neither true nor false.
    """
    env = os.environ if environ is None else environ
    raw = env.get(INCLUDE_MSI_ENV, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(
        f"{INCLUDE_MSI_ENV}={env.get(INCLUDE_MSI_ENV)!r} is not a boolean "
        "(use true/false, yes/no, on/off or 1/0)"
    )


def default_credential(environ: Mapping[str, str] | None = None) -> DefaultAzureCredential:
    """A ``DefaultAzureCredential``, with managed identity only if the environment asks for it.

    azure-identity is imported here, when a credential is first needed: a
    store opened with a connection string (the CLI's usual case) never pays
    for importing it.
    """
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(
        exclude_managed_identity_credential=not include_managed_identity(environ)
    )
