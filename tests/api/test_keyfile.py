"""``keyfile`` mode: RS256/ES256 tokens against a PEM public key; key confusion is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt

from engine.api.auth_settings import AuthSettings
from engine.errors import ConfigError
from tests.api.conftest import AppFactory, TestClient, bearer

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _pem_private(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_public(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "idp-user", "aud": "engine", "exp": now + 300, "roles": ["viewer"], **extra}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rsa_client(make_app: AppFactory, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> TestClient:
    path = tmp_path / "idp.pem"
    path.write_bytes(_pem_public(rsa_key))
    return TestClient(make_app(auth_settings=AuthSettings(mode="keyfile", key_file=path)))


def _list(client: TestClient, token: str) -> int:
    return client.get("/api/messages", headers=bearer(token)).status_code


def test_rs256_token_signed_by_the_key_passes(
    rsa_client: TestClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert _list(rsa_client, jwt.encode(_claims(), _pem_private(rsa_key), "RS256")) == 200


def test_rs256_token_signed_by_another_key_is_401(rsa_client: TestClient) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _list(rsa_client, jwt.encode(_claims(), _pem_private(other), "RS256")) == 401


def test_rs512_is_refused_unless_configured(
    rsa_client: TestClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert _list(rsa_client, jwt.encode(_claims(), _pem_private(rsa_key), "RS512")) == 401


def test_hs256_signed_with_the_public_key_text_is_401(
    rsa_client: TestClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The classic confusion attack: the public key (which anyone has) used as an HMAC secret."""

    def part(data: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(_claims(roles=["admin"]))
    mac = hmac.new(_pem_public(rsa_key), signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    response = rsa_client.get("/api/messages", headers=bearer(forged))
    assert response.status_code == 401
    assert response.json()["detail"] == "token algorithm not accepted"


def test_es256_key_file(make_app: AppFactory, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "idp-ec.pem"
    path.write_bytes(_pem_public(key))
    client = TestClient(make_app(auth_settings=AuthSettings(mode="keyfile", key_file=path)))
    assert _list(client, jwt.encode(_claims(), _pem_private(key), "ES256")) == 200
    assert _list(client, jwt.encode(_claims(aud="x"), _pem_private(key), "ES256")) == 401


def _refused(make_app: AppFactory, path: Path, match: str, **settings: Any) -> None:
    with pytest.raises(ConfigError, match=match):
        make_app(auth_settings=AuthSettings(mode="keyfile", key_file=path, **settings))


def test_bad_key_files_stop_start_up(
    make_app: AppFactory, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    _refused(make_app, tmp_path / "missing.pem", "cannot read")
    private = tmp_path / "private.pem"
    private.write_text(_pem_private(rsa_key))
    _refused(make_app, private, "private key is refused")
    small = tmp_path / "small.pem"
    small.write_bytes(_pem_public(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    _refused(make_app, small, "2048 or more")
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(_pem_public(ec.generate_private_key(ec.SECP384R1())))
    _refused(make_app, p384, "none of algorithms", algorithms=["RS256", "ES256"])
