"""Subject builders and validators (docs/PROTOCOL.md §10, "Subjects")."""

from __future__ import annotations

import nkeys
import pytest

from agoramesh.bus.identity import Identity
from agoramesh.bus.subjects import (
    MAX_CAPABILITY_LENGTH,
    MAX_SUBJECT_LENGTH,
    Subjects,
    validate_capability,
    validate_capability_pattern,
    validate_subject,
)
from agoramesh.errors import SubjectError

AGENT = Identity(nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_USER)).agent_id
ACCOUNT_ID = nkeys.from_seed(
    bytearray(nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_ACCOUNT))
).public_key.decode()


@pytest.fixture
def subjects() -> Subjects:
    return Subjects()


def test_default_prefix_builds_the_design_subjects(subjects: Subjects) -> None:
    assert subjects.prefix == "agora"
    assert subjects.cap("echo") == "agora.cap.echo"
    assert subjects.task("echo") == "agora.task.echo"
    assert subjects.cfp("echo") == "agora.cfp.echo"
    assert subjects.agent(AGENT) == f"agora.agent.{AGENT}"
    assert subjects.presence(AGENT) == f"agora.presence.{AGENT}"
    assert subjects.presence_all == "agora.presence.>"
    assert subjects.discover == "agora.discover"
    assert subjects.status(AGENT) == f"agora.status.{AGENT}"
    assert subjects.help("echo") == "agora.help.echo"
    assert subjects.telemetry(AGENT) == f"agora.telemetry.{AGENT}"
    assert subjects.telemetry_all == "agora.telemetry.>"


def test_custom_prefix_is_honoured() -> None:
    subjects = Subjects(prefix="mesh-2")
    assert subjects.cap("code.review") == "mesh-2.cap.code.review"
    assert subjects.task("x") == "mesh-2.task.x"
    assert subjects.cfp("x") == "mesh-2.cfp.x"
    assert subjects.agent(AGENT) == f"mesh-2.agent.{AGENT}"
    assert subjects.presence(AGENT) == f"mesh-2.presence.{AGENT}"
    assert subjects.presence_all == "mesh-2.presence.>"
    assert subjects.discover == "mesh-2.discover"
    assert subjects.status(AGENT) == f"mesh-2.status.{AGENT}"
    assert subjects.help("x") == "mesh-2.help.x"


@pytest.mark.parametrize("prefix", ["", "a b", "a..b", "a.*", "a.>", ">", 5, None])
def test_invalid_prefix_is_refused(prefix: object) -> None:
    with pytest.raises(SubjectError):
        Subjects(prefix=prefix)  # type: ignore[arg-type]


def test_subjects_is_frozen(subjects: Subjects) -> None:
    with pytest.raises(AttributeError):
        subjects.prefix = "other"  # type: ignore[misc]


def test_built_concrete_subjects_are_valid_subjects(subjects: Subjects) -> None:
    for subject in (
        subjects.cap("code.review.python"), subjects.task("a-b_c"), subjects.cfp("x"),
        subjects.agent(AGENT), subjects.presence(AGENT), subjects.discover,
        subjects.status(AGENT), subjects.help("y.z"),
    ):
        assert validate_subject(subject) == subject


@pytest.mark.parametrize(
    "capability",
    ["echo", "code.review.python", "a-b_c.D9", "x" * MAX_CAPABILITY_LENGTH,
     ".".join(["a"] * 16)],
)
def test_valid_capabilities(subjects: Subjects, capability: str) -> None:
    assert validate_capability(capability) == capability
    assert validate_capability_pattern(capability) == capability
    assert subjects.cap(capability) == f"agora.cap.{capability}"


@pytest.mark.parametrize("pattern", ["code.*", "code.>", "*", ">", "*.review", "a.*.c.>"])
def test_wildcard_patterns_accepted_by_builders(subjects: Subjects, pattern: str) -> None:
    assert validate_capability_pattern(pattern) == pattern
    assert subjects.cap(pattern) == f"agora.cap.{pattern}"
    assert subjects.cfp(pattern) == f"agora.cfp.{pattern}"
    assert subjects.task(pattern) == f"agora.task.{pattern}"
    assert subjects.help(pattern) == f"agora.help.{pattern}"


@pytest.mark.parametrize("pattern", ["code.*", "code.>", "*", ">"])
def test_wildcards_are_not_capabilities(pattern: str) -> None:
    with pytest.raises(SubjectError):
        validate_capability(pattern)


INVALID = [
    pytest.param("", id="empty"),
    pytest.param("code review", id="space"),
    pytest.param(" echo", id="leading-space"),
    pytest.param("code..review", id="empty-token"),
    pytest.param(".code", id="leading-dot"),
    pytest.param("code.", id="trailing-dot"),
    pytest.param("code.>.x", id="gt-not-last"),
    pytest.param(">.x", id="gt-first"),
    pytest.param("code>", id="gt-in-token"),
    pytest.param("co*de", id="star-in-token"),
    pytest.param("x" * (MAX_CAPABILITY_LENGTH + 1), id="too-long"),
    pytest.param("tâche", id="non-ascii"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\nb", id="newline"),
]


@pytest.mark.parametrize("capability", INVALID)
def test_invalid_capabilities_raise_subject_error(subjects: Subjects, capability: str) -> None:
    with pytest.raises(SubjectError, match="invalid capability"):
        validate_capability(capability)
    with pytest.raises(SubjectError, match="invalid capability pattern"):
        validate_capability_pattern(capability)
    for build in (subjects.cap, subjects.task, subjects.cfp, subjects.help):
        with pytest.raises(SubjectError):
            build(capability)


def test_invalid_capability_message_is_clear() -> None:
    with pytest.raises(SubjectError) as info:
        validate_capability("code review")
    message = str(info.value)
    assert "'code review'" in message
    assert "dot-separated" in message and "code.review.python" in message


def test_too_deep_capability_is_refused() -> None:
    deep = ".".join(["a"] * 17)
    assert len(deep) <= MAX_CAPABILITY_LENGTH
    with pytest.raises(SubjectError, match="16 levels"):
        validate_capability(deep)


def test_too_deep_capability_is_refused_by_builders(subjects: Subjects) -> None:
    for deep in (".".join(["a"] * 17), ".".join(["*"] * 16) + ".>"):
        with pytest.raises(SubjectError, match="16 levels"):
            validate_capability_pattern(deep)
        for build in (subjects.cap, subjects.task, subjects.cfp, subjects.help):
            with pytest.raises(SubjectError):
                build(deep)
    assert subjects.cap(".".join(["*"] * 15) + ".>").endswith(".>")


@pytest.mark.parametrize("value", [None, 1, b"echo", ["echo"], 1.5])
def test_non_str_capability(subjects: Subjects, value: object) -> None:
    with pytest.raises(SubjectError, match="must be a string"):
        validate_capability(value)
    with pytest.raises(SubjectError, match="pattern"):
        validate_capability_pattern(value)
    with pytest.raises(SubjectError):
        subjects.cap(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "agent_id",
    ["", "U", "U" * 56, "not-an-agent", AGENT.lower(), AGENT[:-1], AGENT + "A", ACCOUNT_ID,
     "*", ">", f"{AGENT[:28]}.{AGENT[29:]}"],
)
def test_invalid_agent_ids_raise_subject_error(subjects: Subjects, agent_id: str) -> None:
    for build in (subjects.agent, subjects.presence, subjects.status, subjects.telemetry):
        with pytest.raises(SubjectError, match="invalid agent id") as info:
            build(agent_id)
        assert "56-character" in str(info.value)


@pytest.mark.parametrize(
    ("subject", "capability"),
    [
        ("agora.cap.echo", "echo"),
        ("agora.task.code.review", "code.review"),
        ("agora.cfp.code.>", "code.>"),
        ("agora.help.x", "x"),
        (f"agora.agent.{AGENT}", None),
        (f"agora.presence.{AGENT}", None),
        ("agora.discover", None),
        ("agora.cap", None),
        ("agora.cap.", None),
        ("other.cap.echo", None),
        ("agoraX.cap.echo", None),
        ("", None),
        ("cap.echo", None),
    ],
)
def test_capability_of(subjects: Subjects, subject: str, capability: str | None) -> None:
    assert subjects.capability_of(subject) == capability


def test_capability_of_round_trips_builders() -> None:
    subjects = Subjects(prefix="m1")
    for build in (subjects.cap, subjects.task, subjects.cfp, subjects.help):
        assert subjects.capability_of(build("code.review.python")) == "code.review.python"
    assert subjects.capability_of("agora.cap.echo") is None


def test_capability_of_with_dotted_prefix() -> None:
    subjects = Subjects(prefix="org.mesh")
    assert subjects.cap("echo") == "org.mesh.cap.echo"
    assert subjects.capability_of(subjects.cap("echo")) == "echo"
    assert subjects.capability_of(subjects.help("a.b")) == "a.b"
    assert subjects.capability_of("org.cap.echo") is None
    assert subjects.capability_of("org.meshy.cap.echo") is None
    assert subjects.capability_of("org.mesh.agent.x") is None


@pytest.mark.parametrize(
    "subject",
    ["a", "agora.cap.echo", "_INBOX.abc123.x", "$SRV.PING", "a-b_c.d!e#f", "~.|.{}",
     "x" * MAX_SUBJECT_LENGTH, f"agora.agent.{AGENT}"],
)
def test_validate_subject_accepts(subject: str) -> None:
    assert validate_subject(subject) == subject


@pytest.mark.parametrize(
    "subject",
    ["", ".", "a.", ".a", "a..b", "a b", "a\tb", "a\nb", "agora.*", "agora.>", "a*", "b>",
     "*", ">", "x" * (MAX_SUBJECT_LENGTH + 1), "agora.cap.é", "a\x00b", "a\x7fb"],
)
def test_validate_subject_rejects(subject: str) -> None:
    with pytest.raises(SubjectError, match="invalid subject"):
        validate_subject(subject)


@pytest.mark.parametrize("value", [None, 1, b"a.b", ["a"]])
def test_validate_subject_rejects_non_str(value: object) -> None:
    with pytest.raises(SubjectError, match="must be a string"):
        validate_subject(value)


def test_subject_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        validate_subject("")
