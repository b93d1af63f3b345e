"""docs/PROTOCOL.md §9's list of error types a requester rebuilds is WIRE_ERRORS, exactly.

The list is the paragraph of §9 that follows "keeps the name and message:";
every name in backquotes there counts. A type added to WIRE_ERRORS and not
to the document (or the reverse) fails here, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

from agoramesh.errors import WIRE_ERRORS

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
_SECTION_9 = re.compile(r"^## 9\. .*?(?=^## 10\. )", re.MULTILINE | re.DOTALL)
_LEAD = "generic remote error that keeps the name and message:"
_NAME = re.compile(r"`([A-Z][A-Za-z]*)`")


def rebuilt_in_protocol() -> list[str]:
    """The error type names of §9's list, in the document's order."""
    section = _SECTION_9.search(PROTOCOL.read_text("utf-8"))
    assert section, "PROTOCOL.md has no section 9"
    _, lead, rest = section[0].partition(_LEAD)
    assert lead, f"section 9 no longer says {_LEAD!r}"
    return _NAME.findall(rest.split("\n\n", 1)[0])


def test_section_9_lists_exactly_the_wire_errors() -> None:
    listed = rebuilt_in_protocol()
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(listed)}"
    assert set(listed) - set(WIRE_ERRORS) == set(), "listed, but arrive as RemoteError"
    assert set(WIRE_ERRORS) - set(listed) == set(), "rebuilt, but missing from PROTOCOL.md §9"
