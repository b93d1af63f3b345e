"""The one ``${…}`` engine workflows and collaborations share: syntax, substitution, lookups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from agoramesh.errors import InvalidInput
from agoramesh.protocols.references import Syntax, describe, follow, stringify


@dataclass(frozen=True)
class Ref:
    parts: tuple[str, ...]
    text: str


def _read(parts: list[str], text: str) -> Ref | None:
    return Ref(tuple(parts), text) if parts[0] in ("a", "b") else None


SYNTAX = Syntax(_read, error=InvalidInput, usage="use ${a…} or ${b…}")
VALUES: dict[str, Any] = {"a": "text", "b": {"list": [1, "é"], "flag": True, "none": None},
                          "a.n": 3}


def lookup(ref: Ref) -> Any:
    return VALUES[".".join(ref.parts)] if ".".join(ref.parts) in VALUES else follow(
        VALUES[ref.parts[0]], ref.parts[1:], text=ref.text, root=ref.parts[0])


def test_literal_text_escapes_and_references_in_order() -> None:
    tokens = list(SYNTAX.tokens("x ${a} $${a} ${ b.list }!"))
    assert tokens == ["x ", Ref(("a",), "${a}"), " ", "${", "a} ",
                      Ref(("b", "list"), "${b.list}"), "!"]
    assert SYNTAX.references({"k": ["${a}", {"n": "${a.n}"}], "v": 7, "t": ("${b}",)}) == [
        Ref(("a",), "${a}"), Ref(("a", "n"), "${a.n}"), Ref(("b",), "${b}")]
    assert SYNTAX.references("no references, $${a} is escaped") == []


def test_one_reference_keeps_its_type_embedded_ones_are_compact_json() -> None:
    template = {"whole": "${b}", "list": "${b.list}", "n": "${a.n}", "null": "${b.none}",
                "text": "a=${a} n=${a.n}", "embedded": "${b.list}/${b.flag}/${b.none}/${b}",
                "escaped": "$${a} stays, ${a} goes", "nested": [("${a.n}",)], "plain": 1.5}
    assert SYNTAX.render(template, lookup) == {
        "whole": VALUES["b"], "list": [1, "é"], "n": 3, "null": None,
        "text": "a=text n=3",
        "embedded": '[1,"é"]/true/null/{"list":[1,"é"],"flag":true,"none":null}',
        "escaped": "${a} stays, text goes", "nested": [[3]], "plain": 1.5}
    assert stringify("as is") == "as is" and stringify({"k": [1, 2]}) == '{"k":[1,2]}'


@pytest.mark.parametrize(("text", "message"), [
    ("${a", r"^unterminated or nested reference in '\$\{a'$"),
    ("x ${a.${b}}", r"^unterminated or nested reference in 'x \$\{a\.\$\{b\}\}'$"),
    ("${c.d}", r"^bad reference \$\{c\.d\}: use \$\{a…\} or \$\{b…\}$"),
    ("${a..b}", r"^bad reference \$\{a\.\.b\}"),
    ("${}", r"^bad reference \$\{\}"),
    ("${a.x y}", r"^bad reference \$\{a\.x y\}"),
    ("${a.x\ny}", r"^bad reference '\$\{a\.x\\ny\}'"),
    ("${" + "c." * 60 + "c}", r"^bad reference '\$\{c\.c\.c"),
    ("${" + "x" * 200, r"^unterminated or nested reference in '\$\{xxx"),
])
def test_malformed_text_is_one_line_of_the_namespace_error(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        SYNTAX.render(text, lookup)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 140


def test_follow_names_what_is_missing() -> None:
    value = {"issues": [{"line": 4}], "code": "x = 1"}
    assert follow(value, ("issues", "0", "line"), text="${r}", root="output") == 4
    with pytest.raises(LookupError, match=r"^\$\{r\}: no field 'cdoe' in output \(fields: "
                                          r"issues, code\)$"):
        follow(value, ("cdoe",), text="${r}", root="output")
    with pytest.raises(LookupError, match=r"^\$\{r\}: issues has only 1 item\(s\)$"):
        follow(value, ("issues", "5"), text="${r}", root="output")
    with pytest.raises(LookupError, match=r"code is a str, not an object with field 'x'"):
        follow(value, ("code", "x"), text="${r}", root="output")
    assert describe(None) == "null" and describe([]) == "a list"
