"""Secrets never reach output: keys, signatures and URL query strings are masked."""

from __future__ import annotations

import logging

import pytest

from boilermaker.config import Config
from boilermaker.exceptions import BoilermakerError
from boilermaker.redact import MASK, redact, redact_url

KEY = "s3cr3tK3yAAAAbbbbCCCCddddEEEEffffGGGGhhhh="
SIG = "sv=2023-01-03&ss=b&sig=Zm9vYmFyc2VjcmV0c2lnbmF0dXJl%3D&se=2030-01-01"


@pytest.mark.parametrize(
    "text",
    [
        f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={KEY}",
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=x",
        f"cannot reach https://acct.blob.core.windows.net/c?{SIG} (timeout)",
        f"Authorization: SharedAccessSignature sr=x&sig={KEY}&se=1",
        f"BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature={SIG}",
        f"{{'Authorization': 'Bearer {KEY}'}}",
    ],
)
def test_redact_masks_every_secret(text: str) -> None:
    cleaned = redact(text)
    assert KEY not in cleaned
    assert "Zm9vYmFyc2VjcmV0c2lnbmF0dXJl" not in cleaned
    assert MASK in cleaned


def test_redact_keeps_what_is_not_secret() -> None:
    text = "Endpoint=sb://ns/;SharedAccessKeyName=RootManageSharedAccessKey;EntityPath=q"
    assert redact(text) == text
    assert redact_url("https://acct.blob.core.windows.net/c?" + SIG) == (
        f"https://acct.blob.core.windows.net/c?{MASK}"
    )
    assert redact_url("https://user:pw@host/path") == f"https://user:{MASK}@host/path"


def test_exceptions_never_carry_a_secret() -> None:
    error = BoilermakerError(f"failed on https://acct.blob.core.windows.net/c?{SIG}")
    assert "sig=" not in str(error)
    assert "Zm9v" not in repr(error)


def test_config_repr_hides_connection_strings() -> None:
    config = Config(
        service_bus_connection_string=f"Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey={KEY}",
        results_connection_string=f"AccountName=a;AccountKey={KEY}",
    )
    assert KEY not in repr(config)
    assert KEY not in str(config)


def test_log_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    import boilermaker  # noqa: F401  (installs the filter)

    caplog.set_level(logging.INFO, logger="boilermaker.app")
    logging.getLogger("boilermaker.app").error("connecting with %s", f"AccountKey={KEY}")
    try:
        raise RuntimeError(f"SharedAccessKey={KEY}")
    except RuntimeError:
        logging.getLogger("boilermaker.app").exception("failed")
    text = caplog.text
    assert KEY not in text
    assert f"AccountKey={MASK}" in text
