"""Client assertions (SMART Backend Services, RFC 7523) checked as an EHR would: python-jose and
the engine's published JWKS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jose import jwt
from jose.exceptions import JWTError

from engine.keys import (
    MAX_LIFETIME_S,
    Keyring,
    SigningKeyError,
    client_assertion,
    client_assertion_for,
    jwks_url,
)
from engine.settings import Settings

CLIENT = "my-backend-app"
TOKEN_URL = "https://fhir.example.test/oauth2/token"
JKU = "https://engine.example.test/.well-known/jwks.json"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path / "keys")


def verify(token: str, keyring: Keyring) -> dict[str, Any]:
    """What the EHR does: the key of the header's kid in the key set it fetched, the algorithms
    it allows, its own token URL as the audience."""
    kid = jwt.get_unverified_header(token)["kid"]
    found = [key for key in keyring.jwks()["keys"] if key["kid"] == kid]
    if not found:
        raise JWTError(f"no published key {kid}")
    claims: dict[str, Any] = jwt.decode(
        token, found[0], algorithms=["RS384", "ES384"], audience=TOKEN_URL, issuer=CLIENT
    )
    return claims


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_an_assertion_verifies_against_the_published_jwks(keyring: Keyring, alg: str) -> None:
    record = keyring.create(alg)
    token = client_assertion(keyring, CLIENT, TOKEN_URL, jku=JKU)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg and header["kid"] == record.kid and header["jku"] == JKU
    claims = verify(token, keyring)
    assert claims["iss"] == claims["sub"] == CLIENT and claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - claims["iat"] <= MAX_LIFETIME_S
    assert "nbf" not in claims


def test_each_assertion_has_its_own_jti(keyring: Keyring) -> None:
    keyring.create("ES384")
    jtis = {verify(client_assertion(keyring, CLIENT, TOKEN_URL), keyring)["jti"] for _ in range(5)}
    assert len(jtis) == 5


def test_no_jku_without_a_public_url(keyring: Keyring) -> None:
    keyring.create("ES384")
    assert "jku" not in jwt.get_unverified_header(client_assertion(keyring, CLIENT, TOKEN_URL))


def test_a_lifetime_over_five_minutes_is_refused(keyring: Keyring) -> None:
    keyring.create("ES384")
    with pytest.raises(SigningKeyError, match="lifetime 301 s"):
        client_assertion(keyring, CLIENT, TOKEN_URL, lifetime_s=301)
    token = client_assertion(keyring, CLIENT, TOKEN_URL, lifetime_s=300, clock=lambda: 10**9)
    claims = jwt.get_unverified_claims(token)
    assert (claims["iat"], claims["exp"]) == (10**9, 10**9 + 300)


def test_rotated_keys_verify_until_retired(keyring: Keyring) -> None:
    first = keyring.create("ES384")
    before = client_assertion(keyring, CLIENT, TOKEN_URL)
    new, _ = keyring.rotate("RS384")
    after = client_assertion(keyring, CLIENT, TOKEN_URL)
    assert jwt.get_unverified_header(after)["kid"] == new.kid
    assert verify(before, keyring)["iss"] == CLIENT  # signed before the rotation: still good
    assert verify(after, keyring)["iss"] == CLIENT
    keyring.retire(first.kid)
    with pytest.raises(JWTError):
        verify(before, keyring)
    assert verify(after, keyring)["iss"] == CLIENT


def test_no_active_key_no_assertion(keyring: Keyring) -> None:
    with pytest.raises(SigningKeyError, match="no active signing key"):
        client_assertion(keyring, CLIENT, TOKEN_URL)


def test_the_jku_comes_from_the_public_base_url(tmp_path: Path) -> None:
    assert jwks_url(None) is None and jwks_url("") is None
    assert jwks_url("https://engine.example.test/") == JKU
    assert jwks_url("https://engine.example.test/base") == (
        "https://engine.example.test/base/.well-known/jwks.json"
    )
    with pytest.raises(SigningKeyError, match="ENGINE_PUBLIC_BASE_URL"):
        jwks_url("engine.example.test")
    settings = Settings(home=tmp_path, public_base_url="https://engine.example.test")
    Keyring(tmp_path / "var" / "keys").create("ES384")
    token = client_assertion_for(settings, CLIENT, TOKEN_URL)
    assert jwt.get_unverified_header(token)["jku"] == JKU
