"""The engine's signing keys on disk: states, thumbprint kids, file modes, the index."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from engine.keys import ACTIVE, PREVIOUS, RETIRED, Keyring, SigningKeyError, thumbprint
from engine.keys.assertion import keyring_for
from engine.settings import Settings


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path / "var" / "keys")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_rfc_7638_example_thumbprint() -> None:
    # RFC 7638 §3.1: the example RSA key and its thumbprint
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
        "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
        "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    public = {"kty": "RSA", "n": n, "e": "AQAB"}
    assert thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_create_makes_one_active_key_private_to_the_engine(keyring: Keyring) -> None:
    record = keyring.create("ES384")
    assert record.state == ACTIVE and record.alg == "ES384"
    assert record.kid == thumbprint(record.public)
    assert set(record.public) == {"kty", "crv", "x", "y"} and record.public["crv"] == "P-384"
    assert record.file is not None
    path = keyring.folder / record.file
    assert _mode(keyring.folder) == 0o700
    assert _mode(path) == 0o600 and _mode(keyring.index) == 0o600
    private = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert [r.kid for r in keyring.records()] == [record.kid]
    with pytest.raises(SigningKeyError, match=f"an active key exists \\({record.kid}\\)"):
        keyring.create("ES384")


def test_rs384_keys_are_rsa_3072(keyring: Keyring) -> None:
    record = keyring.create()
    assert record.alg == "RS384" and set(record.public) == {"kty", "n", "e"}
    assert record.file is not None
    private = serialization.load_pem_private_key((keyring.folder / record.file).read_bytes(), None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 3072


def test_an_unknown_algorithm_is_refused(keyring: Keyring) -> None:
    with pytest.raises(SigningKeyError, match="'HS256' not offered"):
        keyring.create("HS256")
    assert keyring.records() == []


def test_rotate_keeps_the_old_key_published_until_retired(keyring: Keyring) -> None:
    with pytest.raises(SigningKeyError, match="no active key to rotate"):
        keyring.rotate()
    first = keyring.create("ES384")
    new, old = keyring.rotate()
    assert new.alg == "ES384" and new.kid != first.kid and old.kid == first.kid
    assert {r.kid: r.state for r in keyring.records()} == {first.kid: PREVIOUS, new.kid: ACTIVE}
    assert keyring.active().kid == new.kid
    assert [k["kid"] for k in keyring.jwks()["keys"]] == [first.kid, new.kid]

    with pytest.raises(SigningKeyError, match="is active, not previous; rotate first"):
        keyring.retire(new.kid)
    with pytest.raises(SigningKeyError, match="no key with kid nope"):
        keyring.retire("nope")
    assert old.file is not None
    retired = keyring.retire(first.kid)
    assert retired.state == RETIRED and retired.file is None
    assert not (keyring.folder / old.file).exists()  # the private key is gone
    assert [k["kid"] for k in keyring.jwks()["keys"]] == [new.kid]
    with pytest.raises(SigningKeyError, match="is retired, not previous"):
        keyring.retire(first.kid)
    assert [r.state for r in keyring.records()] == [RETIRED, ACTIVE]  # listed, not published


def test_rotate_can_change_the_algorithm(keyring: Keyring) -> None:
    keyring.create("ES384")
    new, _ = keyring.rotate("RS384")
    assert new.alg == "RS384" and keyring.active().alg == "RS384"


def test_the_jwks_has_public_members_only(keyring: Keyring) -> None:
    keyring.create("RS384")
    keyring.rotate("ES384")
    rsa_key, ec_key = keyring.jwks()["keys"]
    assert set(rsa_key) == {"kty", "kid", "alg", "use", "n", "e"} and rsa_key["use"] == "sig"
    assert set(ec_key) == {"kty", "kid", "alg", "use", "crv", "x", "y"}
    assert ec_key["alg"] == "ES384" and ec_key["crv"] == "P-384"
    index = keyring.index.read_text()
    assert '"d"' not in index and "PRIVATE" not in index


def test_a_key_file_others_may_read_is_refused_by_name(keyring: Keyring) -> None:
    record = keyring.create("ES384")
    assert record.file is not None
    path = keyring.folder / record.file
    os.chmod(path, 0o640)
    with pytest.raises(SigningKeyError) as caught:
        keyring.active()
    assert str(path) in str(caught.value) and "0640" in str(caught.value)
    os.chmod(path, 0o600)
    assert keyring.active().kid == record.kid


def test_no_active_key_is_one_line_naming_the_folder(keyring: Keyring) -> None:
    with pytest.raises(SigningKeyError, match="no active signing key; run 'engine keys create'"):
        keyring.active()
    assert keyring.jwks() == {"keys": []}


def test_a_damaged_index_is_named(keyring: Keyring) -> None:
    keyring.create("ES384")
    keyring.index.write_text("{not json")
    with pytest.raises(SigningKeyError, match=f"{keyring.index}: not a valid key index"):
        keyring.records()
    keyring.index.write_text(json.dumps({"keys": [{"kid": "x"}]}))
    with pytest.raises(SigningKeyError, match="not a valid key index"):
        keyring.jwks()


def test_the_keys_live_under_the_engine_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert keyring_for(settings).folder == tmp_path / "var" / "keys"
