"""The error-handling guide lists every dead-letter reason, in its table."""

from __future__ import annotations

import re

from boilermaker import reasons
from tests.docs.markdown_examples import ROOT

PAGE = ROOT / "docs" / "guides" / "error-handling.md"


def table_reasons() -> set[str]:
    """The first column of the page's table rows: ``| `Reason` | ...``."""
    return set(re.findall(r"^\| `([A-Za-z]+)` \|", PAGE.read_text(), re.MULTILINE))


def test_every_reason_the_code_defines_has_a_row() -> None:
    defined = {
        value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)
    }
    assert set(reasons.REASONS) <= defined
    assert "MaxDeliveryCountExceeded" in defined
    missing = defined - table_reasons()
    assert not missing, f"docs/guides/error-handling.md lacks rows for {sorted(missing)}"


def test_every_row_is_a_reason_the_code_defines() -> None:
    defined = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    unknown = table_reasons() - defined
    assert not unknown, f"rows for reasons the code does not define: {sorted(unknown)}"
