"""Agent identities: nkey user key pairs, seed files, signatures."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import nkeys
import pytest

from agoramesh.bus.identity import (
    AGENT_ID_LENGTH,
    Identity,
    is_agent_id,
    public_key_bytes,
    verify,
)
from agoramesh.errors import IdentityError

RAW = bytes(range(100, 132))
USER_SEED = nkeys.encode_seed(RAW, nkeys.PREFIX_BYTE_USER)
ACCOUNT_SEED = nkeys.encode_seed(RAW, nkeys.PREFIX_BYTE_ACCOUNT)
ACCOUNT_ID = nkeys.from_seed(bytearray(ACCOUNT_SEED)).public_key.decode()

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def replace_char(text: bytes, index: int) -> bytes:
    """``text`` with the base32 character at ``index`` changed to another valid one."""
    index %= len(text)
    other = b"B" if text[index : index + 1] != b"B" else b"C"
    return text[:index] + other + text[index + 1 :]


# --- keys ---------------------------------------------------------------------

def test_generate_makes_a_user_key_pair() -> None:
    identity = Identity.generate()
    assert len(identity.agent_id) == AGENT_ID_LENGTH == 56
    assert identity.agent_id.startswith("U")
    assert identity.seed.startswith(b"SU") and len(identity.seed) == 58
    assert is_agent_id(identity.agent_id)
    assert Identity.generate().agent_id != identity.agent_id


def test_agent_id_matches_the_nkeys_library() -> None:
    for seed in (USER_SEED, Identity.generate().seed):
        expected = nkeys.from_seed(bytearray(seed)).public_key.decode()
        assert Identity(seed).agent_id == expected


def test_public_key_bytes_is_the_ed25519_key() -> None:
    identity = Identity(USER_SEED)
    raw = public_key_bytes(identity.agent_id)
    assert len(raw) == 32
    decoded = base64.b32decode(identity.agent_id)
    assert decoded[1:33] == raw
    assert decoded[0] == nkeys.PREFIX_BYTE_USER


def test_seed_as_str_bytes_or_with_whitespace_gives_same_identity() -> None:
    expected = Identity(USER_SEED).agent_id
    assert Identity(USER_SEED.decode()).agent_id == expected
    assert Identity(b"  " + USER_SEED + b"\n").agent_id == expected
    assert Identity(bytearray(USER_SEED)).agent_id == expected
    assert Identity(USER_SEED.decode() + "\r\n").seed == USER_SEED


def test_repr_shows_the_agent_id_not_the_seed() -> None:
    identity = Identity(USER_SEED)
    assert repr(identity) == f"Identity({identity.agent_id})"
    assert USER_SEED.decode() not in repr(identity)


def test_signatures_are_deterministic_ed25519() -> None:
    identity = Identity(USER_SEED)
    signature = identity.sign(b"message")
    assert len(signature) == 64
    assert identity.sign(b"message") == signature
    assert identity.sign(b"other") != signature
    # The nkeys library verifies it too.
    assert nkeys.from_seed(bytearray(USER_SEED)).verify(b"message", signature)


# --- bad seeds ----------------------------------------------------------------

@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(b"garbage", id="garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(b"   \n", id="blank"),
        pytest.param(USER_SEED.lower(), id="lowercase"),
        pytest.param(USER_SEED[:-4], id="truncated"),
        pytest.param(USER_SEED + b"AAAAAAAA", id="too-long"),
        pytest.param(ACCOUNT_SEED, id="account-seed"),
        pytest.param(nkeys.encode_seed(RAW, nkeys.PREFIX_BYTE_OPERATOR), id="operator-seed"),
        pytest.param(replace_char(USER_SEED, -3), id="corrupted-checksum"),
        pytest.param(replace_char(USER_SEED, 20), id="corrupted-key"),
        pytest.param(Identity(USER_SEED).agent_id.encode(), id="public-key"),
        pytest.param(b"S" + b"=" * 57, id="padding"),
        pytest.param(b"\x00" * 58, id="nul-bytes"),
    ],
)
def test_bad_seed_raises_identity_error(seed: bytes) -> None:
    with pytest.raises(IdentityError) as info:
        Identity(seed)
    assert "seed" in str(info.value)


def test_wrong_prefix_error_names_user_seeds() -> None:
    assert ACCOUNT_SEED.startswith(b"SA")
    with pytest.raises(IdentityError, match="user"):
        Identity(ACCOUNT_SEED)


def test_corrupted_checksum_error_says_so() -> None:
    corrupted = replace_char(USER_SEED, -3)
    assert nkeys.decode_seed(bytearray(corrupted))  # the nkeys library alone would accept it
    with pytest.raises(IdentityError, match="checksum"):
        Identity(corrupted)


def test_non_ascii_seed_raises_identity_error() -> None:
    with pytest.raises(IdentityError, match="seed"):
        Identity("SU" + "é" * 56)
    with pytest.raises(IdentityError, match="seed"):
        Identity(b"SU" + "é".encode() * 28)


# --- seed files ---------------------------------------------------------------

def test_save_load_round_trip(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "keys" / "agent.nk"  # parent is created

    identity.save(path)
    loaded = Identity.load(path)

    assert loaded.agent_id == identity.agent_id
    assert loaded.seed == identity.seed
    assert path.read_bytes() == identity.seed + b"\n"
    assert loaded.sign(b"x") == identity.sign(b"x")


@posix_only
def test_saved_file_is_owner_read_write_only(tmp_path: Path) -> None:
    path = tmp_path / "agent.nk"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        Identity.generate().save(path)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600


@posix_only
@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660, 0o601, 0o610, 0o777])
def test_load_refuses_a_file_others_can_access(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "agent.nk"
    Identity.generate().save(path)
    path.chmod(bad_mode)

    with pytest.raises(IdentityError) as info:
        Identity.load(path)

    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert f"{bad_mode:o}" in message
    assert "\n" not in message


@posix_only
@pytest.mark.parametrize("good_mode", [0o600, 0o400])
def test_load_accepts_owner_only_modes(tmp_path: Path, good_mode: int) -> None:
    identity = Identity.generate()
    path = tmp_path / "agent.nk"
    identity.save(path)
    path.chmod(good_mode)
    assert Identity.load(path).agent_id == identity.agent_id


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.nk"
    with pytest.raises(IdentityError, match="cannot read key file"):
        Identity.load(path)


@posix_only
def test_load_file_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "agent.nk"
    path.write_bytes(b"not a seed\n")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="seed"):
        Identity.load(path)


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "agent.nk"
    first, second = Identity.generate(), Identity.generate()
    first.save(path)

    with pytest.raises(IdentityError, match="refusing to overwrite"):
        second.save(path)

    assert Identity.load(path).agent_id == first.agent_id


@posix_only
def test_save_with_overwrite_replaces_and_tightens_mode(tmp_path: Path) -> None:
    path = tmp_path / "agent.nk"
    path.write_bytes(b"x" * 500)
    path.chmod(0o644)
    identity = Identity.generate()

    identity.save(path, overwrite=True)

    assert mode(path) == 0o600
    assert path.read_bytes() == identity.seed + b"\n"  # truncated, not appended
    assert Identity.load(path).agent_id == identity.agent_id


def test_save_onto_a_directory_is_identity_error(tmp_path: Path) -> None:
    directory = tmp_path / "dir.nk"
    directory.mkdir()
    with pytest.raises(IdentityError, match="cannot write key file"):
        Identity.generate().save(directory, overwrite=True)


def test_save_under_a_file_is_identity_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(IdentityError, match=r"cannot create directory .*file"):
        Identity.generate().save(blocker / "agent.nk")
    assert blocker.read_text() == ""


def test_save_under_a_file_does_not_claim_the_key_exists(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(IdentityError) as info:
        Identity.generate().save(blocker / "agent.nk")
    assert "refusing to overwrite" not in str(info.value)


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "home" / "agent.nk"
    assert not path.exists()

    created = Identity.load_or_create(path)
    assert path.exists()
    loaded = Identity.load_or_create(path)

    assert loaded.agent_id == created.agent_id
    assert loaded.seed == created.seed
    if os.name == "posix":
        assert mode(path) == 0o600


@posix_only
def test_load_or_create_does_not_replace_an_unsafe_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.nk"
    Identity.generate().save(path)
    before = path.read_bytes()
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load_or_create(path)
    assert path.read_bytes() == before


# --- verify -------------------------------------------------------------------

def test_verify_good_signature() -> None:
    identity = Identity.generate()
    assert verify(identity.agent_id, b"data", identity.sign(b"data")) is True
    assert verify(identity.agent_id, b"", identity.sign(b"")) is True


def test_verify_rejects_tampering() -> None:
    identity = Identity.generate()
    signature = identity.sign(b"data")
    tampered_signature = bytes([signature[0] ^ 1]) + signature[1:]
    assert verify(identity.agent_id, b"datb", signature) is False
    assert verify(identity.agent_id, b"data ", signature) is False
    assert verify(identity.agent_id, b"data", tampered_signature) is False
    assert verify(Identity.generate().agent_id, b"data", signature) is False


@pytest.mark.parametrize(
    "agent_id",
    [
        "", "U", "U" * 56, "not an id", ACCOUNT_ID, "é" * 56, "u" * 56,
        Identity(USER_SEED).agent_id.lower(), Identity(USER_SEED).agent_id[:-1],
        Identity(USER_SEED).agent_id + "A", replace_char(
            Identity(USER_SEED).agent_id.encode(), -2
        ).decode(),
        "U" + "=" * 55, "U" + "1" * 55,
    ],
)
def test_verify_and_is_agent_id_reject_malformed_ids(agent_id: str) -> None:
    identity = Identity(USER_SEED)
    assert verify(agent_id, b"data", identity.sign(b"data")) is False
    assert is_agent_id(agent_id) is False
    with pytest.raises(IdentityError):
        public_key_bytes(agent_id)


@pytest.mark.parametrize("agent_id", [None, 123, b"U" * 56, ["U"], {"U": 1}])
def test_verify_and_is_agent_id_reject_non_strings(agent_id: object) -> None:
    signature = Identity(USER_SEED).sign(b"data")
    assert verify(agent_id, b"data", signature) is False  # type: ignore[arg-type]
    assert is_agent_id(agent_id) is False


@pytest.mark.parametrize("length", [0, 1, 32, 63, 65, 128])
def test_verify_rejects_wrong_length_signatures(length: int) -> None:
    identity = Identity(USER_SEED)
    signature = (identity.sign(b"data") * 2)[:length]
    assert verify(identity.agent_id, b"data", signature) is False


@pytest.mark.parametrize(
    "signature",
    [
        None,
        64,
        "x" * 64,
        [0] * 64,
        bytearray(64),
    ],
)
def test_verify_rejects_non_bytes_signatures(signature: object) -> None:
    identity = Identity(USER_SEED)
    assert verify(identity.agent_id, b"data", signature) is False  # type: ignore[arg-type]
