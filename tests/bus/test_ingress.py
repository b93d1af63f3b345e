"""Plain-JSON ingress (agoramesh.bus.ingress)."""

from __future__ import annotations

import json

import msgpack
import pytest

from agoramesh.bus.ingress import (
    MAX_JSON_DEPTH,
    IngressPolicy,
    decode_json,
    encode_json,
    encode_json_error,
    looks_like_json,
)
from agoramesh.errors import (
    BadSignature,
    IngressDenied,
    MalformedEnvelope,
    OversizeEnvelope,
    RemoteError,
    error_from_wire,
)

LIMIT = 1024 * 1024


@pytest.mark.parametrize(
    "data",
    [b"{}", b'{"text": "hi"}', b"  {", b"\n\t\r {\"a\":1}", b"{not json but meant as it"],
)
def test_looks_like_json(data: bytes) -> None:
    assert looks_like_json(data) is True


@pytest.mark.parametrize(
    "data",
    [b"", b"   ", b"[1, 2]", b'"text"', b"null", b"\x8a\xa1v\x01", b"\xde\x00\x0a",
     b"\xef\xbb\xbf{}", b"\x00{}", b"\x0b{}", b"x{"],
)
def test_does_not_look_like_json(data: bytes) -> None:
    assert looks_like_json(data) is False


def test_envelopes_never_look_like_json() -> None:
    # Every msgpack map header byte differs from '{'.
    for header in [*range(0x80, 0x90), 0xDE, 0xDF]:
        assert looks_like_json(bytes([header]) + b"{}") is False
    assert looks_like_json(msgpack.packb({"v": 1})) is False


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{}", {}),
        (b'{"text": "hi", "n": [1, 2.5, null, true]}', {"text": "hi", "n": [1, 2.5, None, True]}),
        ('{"t": "héllo ✓ 🎉"}'.encode(), {"t": "héllo ✓ 🎉"}),
        (b'  {"a": {"b": {"c": {}}}}  \n', {"a": {"b": {"c": {}}}}),
        (b'{"esc": "\\u00e9\\n"}', {"esc": "é\n"}),
    ],
)
def test_decode_json_valid(data: bytes, expected: dict[str, object]) -> None:
    assert decode_json(data, max_bytes=LIMIT) == expected


@pytest.mark.parametrize(
    "data", [b"{", b'{"a": }', b"{'a': 1}", b'{"a": 1,}', b"", b"  ", b'{"a": 1} x', b"nope"]
)
def test_decode_json_invalid(data: bytes) -> None:
    with pytest.raises(MalformedEnvelope, match="not valid JSON"):
        decode_json(data, max_bytes=LIMIT)


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b"[1, 2]", "list"), (b'"s"', "str"), (b"1", "int"), (b"null", "NoneType"),
     (b"true", "bool"), (b"1.5", "float")],
)
def test_decode_json_non_object(data: bytes, kind: str) -> None:
    with pytest.raises(MalformedEnvelope, match=f"must be a JSON object, got {kind}"):
        decode_json(data, max_bytes=LIMIT)


def test_decode_json_oversize_is_checked_first() -> None:
    data = b'{"a": "' + b"x" * 200 + b'"}'
    with pytest.raises(OversizeEnvelope, match=f"{len(data)} bytes exceeds the 100-byte limit"):
        decode_json(data, max_bytes=100)
    with pytest.raises(OversizeEnvelope):
        decode_json(b"\xff" * 101, max_bytes=100)  # not even UTF-8: size comes first
    assert decode_json(data, max_bytes=len(data)) == {"a": "x" * 200}


@pytest.mark.parametrize(
    "data",
    [b'{"a": "\xff"}', b'{"a": "\xc3"}', b"{\x80}", b'{"a": "\xc0\xaf"}'],
)
def test_decode_json_invalid_utf8(data: bytes) -> None:
    with pytest.raises(MalformedEnvelope, match="not valid UTF-8"):
        decode_json(data, max_bytes=LIMIT)


def test_decode_json_encoded_surrogate_is_invalid_utf8() -> None:
    # CESU-style surrogates are invalid UTF-8 (json.loads(bytes) alone would accept them).
    with pytest.raises(MalformedEnvelope, match="not valid UTF-8"):
        decode_json(b'{"\xed\xa0\x80": 1}', max_bytes=LIMIT)


def test_encode_json_survives_lone_surrogates_from_a_request() -> None:
    # '\\ud800' is legal JSON; echoing it back must not raise UnicodeEncodeError.
    request = decode_json(b'{"t": "\\ud800"}', max_bytes=LIMIT)
    assert request == {"t": "\ud800"}
    reply = encode_json(request)
    reply.decode("utf-8")  # strictly valid UTF-8
    assert json.loads(reply) == request
    assert json.loads(encode_json_error(ValueError("\ud800"))) == {
        "error": {"type": "ValueError", "message": "\ud800"}
    }


def test_decode_json_utf8_bom_is_malformed() -> None:
    # RFC 8259 forbids sending a BOM; looks_like_json() already refuses it as JSON.
    with pytest.raises(MalformedEnvelope):
        decode_json(b"\xef\xbb\xbf{}", max_bytes=LIMIT)


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_decode_json_deeply_nested_is_malformed_not_recursion_error(depth: int) -> None:
    data = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(MalformedEnvelope):
        decode_json(data, max_bytes=len(data))


def test_decode_json_nesting_up_to_the_limit_is_fine() -> None:
    # The request object is level 1: MAX_JSON_DEPTH - 1 arrays inside it reach the limit.
    arrays = MAX_JSON_DEPTH - 1
    data = b'{"a": ' + b"[" * arrays + b"]" * arrays + b"}"
    value = decode_json(data, max_bytes=LIMIT)
    depth, node = 0, value["a"]
    while node:
        node, depth = node[0], depth + 1
    assert depth == arrays - 1


@pytest.mark.parametrize("wrap", [(b"[", b"]"), (b'{"k": ', b"}"), (b'[0, "]}", ', b"]")])
def test_decode_json_one_level_past_the_limit_is_malformed(wrap: tuple[bytes, bytes]) -> None:
    opening, closing = wrap
    data = b'{"a": ' + opening * MAX_JSON_DEPTH + b"1" + closing * MAX_JSON_DEPTH + b"}"
    with pytest.raises(MalformedEnvelope,
                       match=f"{MAX_JSON_DEPTH + 1} levels deep; at most {MAX_JSON_DEPTH}"):
        decode_json(data, max_bytes=LIMIT)


def test_decode_json_brackets_in_strings_are_not_nesting() -> None:
    text = "[{" * 200 + '\\"\"]}' + "é" * 3
    data = json.dumps({"t": text, "u": ["]" * 100, "[" * 100]}, ensure_ascii=False).encode()
    assert decode_json(data, max_bytes=LIMIT) == {"t": text, "u": ["]" * 100, "[" * 100]}


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e309",
                                    b"1" * 400 + b".5"])
def test_decode_json_non_finite_numbers_are_malformed(number: bytes) -> None:
    with pytest.raises(MalformedEnvelope, match=r"not valid JSON: .*(not a JSON number|out of "
                                                 r"range)"):
        decode_json(b'{"x": [1, ' + number + b"]}", max_bytes=LIMIT)


@pytest.mark.parametrize("number", [b"1e308", b"-1e308", b"1e-400", b"0.1e-99999", b"9" * 400])
def test_decode_json_finite_extremes_are_fine(number: bytes) -> None:
    value = decode_json(b'{"x": ' + number + b"}", max_bytes=LIMIT)["x"]
    assert value == json.loads(number)


def test_decode_json_huge_integer_is_malformed() -> None:
    # Over sys.get_int_max_str_digits json.loads raises a plain ValueError.
    with pytest.raises(MalformedEnvelope, match="not valid JSON"):
        decode_json(b'{"n": ' + b"9" * 5000 + b"}", max_bytes=LIMIT)


def test_encode_json_is_compact_utf8() -> None:
    encoded = encode_json({"text": "héllo ✓", "n": [1, 2.5, None, True], "o": {}})
    assert encoded == '{"text":"héllo ✓","n":[1,2.5,null,true],"o":{}}'.encode()
    assert json.loads(encoded) == {"text": "héllo ✓", "n": [1, 2.5, None, True], "o": {}}


def test_encode_json_falls_back_for_values_json_cannot_hold() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    encoded = encode_json({"bytes": b"\x00\xff", "ba": bytearray(b"\x01"), "obj": Thing(),
                           "set": {1}})
    assert json.loads(encoded) == {"bytes": "00ff", "ba": "01", "obj": "a thing", "set": "{1}"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"),
                                   {"deep": [1, {"x": float("nan")}]}, {float("inf"): 1}])
def test_encode_json_never_writes_nan_or_infinity(value: object) -> None:
    with pytest.raises(ValueError, match=r"cannot be written as JSON \(RFC 8259\)"):
        encode_json(value)


def test_encode_json_refuses_what_it_cannot_write() -> None:
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        encode_json(looped)
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        encode_json({(1, 2): "tuple key"})


def test_decode_of_encode_round_trips() -> None:
    value = {"a": [1, {"b": "ü"}], "c": None}
    assert decode_json(encode_json(value), max_bytes=LIMIT) == value


def test_encode_json_error_shape() -> None:
    encoded = encode_json_error(BadSignature("signature does not match"))
    assert json.loads(encoded) == {
        "error": {"type": "BadSignature", "message": "signature does not match"}
    }
    assert type(error_from_wire(json.loads(encoded)["error"])) is BadSignature


def test_encode_json_error_for_plain_and_remote_errors() -> None:
    assert json.loads(encode_json_error(KeyError("k"))) == {
        "error": {"type": "KeyError", "message": "'k'"}
    }
    assert json.loads(encode_json_error(RemoteError("Boom", "bang ✓"))) == {
        "error": {"type": "Boom", "message": "bang ✓"}
    }
    denied = json.loads(encode_json_error(IngressDenied("plain JSON is not accepted here")))
    assert denied["error"]["type"] == "IngressDenied"


def test_ingress_policy_values() -> None:
    assert IngressPolicy("deny") is IngressPolicy.DENY
    assert IngressPolicy("allow") is IngressPolicy.ALLOW
    assert {p.value for p in IngressPolicy} == {"deny", "allow"}
    with pytest.raises(ValueError):
        IngressPolicy("maybe")
