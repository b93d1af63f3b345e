"""docs/PROTOCOL.md §9's list of error types a requester rebuilds is WIRE_ERRORS, exactly.

The list is the paragraph of §9 that follows "keeps the name and message:";
every name in backquotes there counts. A type added to WIRE_ERRORS and not
to the document (or the reverse) fails here, so the two cannot drift apart.
The same holds for the envelope's keys (§4), the admission table's reasons and
error types (§8) and the status codes of §9's table (``error_code``).
"""

from __future__ import annotations

import re
from pathlib import Path

from agoramesh.bus.envelope import FIELDS
from agoramesh.errors import WIRE_ERRORS, EnvelopeError, RejectReason, error_code

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


# --- the rest of the envelope's error surface, as PROTOCOL.md (version 2) states it ---

_SECTION = re.compile(r"^## (\d+)\. .*?(?=^## \d+\. )", re.MULTILINE | re.DOTALL)
_ROW = re.compile(r"^\|(.*)\|\s*$", re.MULTILINE)
_REASON = re.compile(r"`([a-z_]+)`")


def section(number: int) -> str:
    for match in _SECTION.finditer(PROTOCOL.read_text("utf-8")):
        if match[1] == str(number):
            return match[0]
    raise AssertionError(f"PROTOCOL.md has no section {number}")


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown table rows whose first cell matches ``first_cell``."""
    rows = [[cell.strip() for cell in row[1].split("|")] for row in _ROW.finditer(text)]
    return [cells for cells in rows if re.fullmatch(first_cell, cells[0])]


def test_section_4_lists_the_envelope_keys_in_order() -> None:
    text = section(4)
    keys = re.search(r"The map has \*\*exactly\*\* the twelve keys(.*?)each a msgpack", text,
                     re.DOTALL)
    assert keys, "section 4 no longer lists the twelve keys"
    assert re.findall(r"`([a-z]+)`", keys[1]) == list(FIELDS)
    assert f"`0x{0x80 | len(FIELDS):02x}`" in text


def test_section_8_admission_table_matches_the_error_types() -> None:
    rows = table_rows(section(8), r"\d+")
    assert [int(cells[0]) for cells in rows] == list(range(1, len(rows) + 1))
    documented: dict[RejectReason, str] = {}
    for cells in rows:
        reasons, names = _REASON.findall(cells[-2]), _NAME.findall(cells[-1])
        assert len(reasons) == len(names), cells
        for reason, name in zip(reasons, names, strict=True):
            error = WIRE_ERRORS[name]
            assert issubclass(error, EnvelopeError), name
            assert error.reason is RejectReason(reason), (name, reason)
            documented[RejectReason(reason)] = name
    # Every reason an envelope can be refused for is in the table; ingress is §11's.
    assert set(documented) == set(RejectReason) - {RejectReason.INGRESS_DENIED}
    assert documented[RejectReason.WRONG_REPLY] == "WrongReply"
    assert documented[RejectReason.SIGNATURE_REQUIRED] == "SignatureRequired"


def test_section_9_status_codes_are_error_code() -> None:
    rows = table_rows(section(9), r"\d{3}")
    assert rows, "section 9 has no status code table"
    for cells in rows:
        code = int(cells[0])
        names = _NAME.findall(cells[-1])
        assert names, cells
        for name in names:
            assert error_code(name) == code, (name, code)
    codes = {int(cells[0]) for cells in rows}
    assert {400, 401} <= codes
    assert error_code("WrongReply") == 400 and error_code("SignatureRequired") == 401
    # Every type that crosses the bus with a code of its own is in the table: another
    # implementation learns the code from the document alone.
    tabled = {name for cells in rows for name in _NAME.findall(cells[-1])}
    assert {name for name in WIRE_ERRORS if error_code(name) != 500} - tabled == set()


def test_section_9_says_what_each_request_error_means() -> None:
    rows = table_rows(section(9), r"`Invalid[A-Za-z]+`")
    described = [_NAME.findall(cells[0])[0] for cells in rows]
    assert described == ["InvalidInput", "InvalidTask", "InvalidBallot", "InvalidRequest"]
    assert all(name in WIRE_ERRORS and error_code(name) == 400 for name in described)
    assert {name for name in WIRE_ERRORS if name.startswith("Invalid")} == set(described)
