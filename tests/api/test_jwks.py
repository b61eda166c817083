"""``jwks`` mode: keys from an identity provider's JWKS URL (httpx.MockTransport), by ``kid``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

from engine.api.auth_settings import AuthSettings
from engine.api.keys import MIN_REFETCH_S, STALE_GRACE_S, JwksKeys, KeysUnavailable, TokenKeyError
from tests.api.conftest import AppFactory, TestClient, bearer, mock_client

URL = "https://idp.example.test/.well-known/jwks.json"


class Provider:
    """A fake identity provider: signing keys by kid, and the JWKS it publishes."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[str] = []
        self.fetches = 0
        self.down = False
        self.body: bytes | None = None

    def add(self, kid: str, key: Any = None, *, publish: bool = True) -> None:
        self.private[kid] = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.append(kid)

    def jwk(self, kid: str) -> dict[str, Any]:
        key = self.private[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {**jwk.construct(public.decode(), alg).to_dict(), "kid": kid, "use": "sig"}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.down:
            return httpx.Response(502)
        if self.body is not None:
            return httpx.Response(200, content=self.body)
        return httpx.Response(200, json={"keys": [self.jwk(kid) for kid in self.published]})

    def token(self, kid: str | None, *, alg: str = "RS256", **claims: Any) -> str:
        key = self.private[kid or self.published[0]]
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        now = int(time.time())
        body = {"sub": "svc", "aud": "engine", "exp": now + 300, "roles": ["viewer"], **claims}
        headers = {"kid": kid} if kid else None
        return str(jwt.encode(body, pem, algorithm=alg, headers=headers))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp() -> Provider:
    provider = Provider()
    provider.add("k1")
    return provider


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(idp: Provider, clock: Clock) -> JwksKeys:
    return JwksKeys(
        URL, algorithms=["RS256", "ES256"], ttl_s=300, client=mock_client(idp.handler), clock=clock
    )


@pytest.fixture
def jwks_client(make_app: AppFactory, idp: Provider) -> TestClient:
    auth = AuthSettings(mode="jwks", jwks_url=URL)
    return TestClient(make_app(auth_settings=auth, http_client=mock_client(idp.handler)))


def test_token_with_a_published_kid_passes(jwks_client: TestClient, idp: Provider) -> None:
    for _ in range(3):
        response = jwks_client.get("/api/messages", headers=bearer(idp.token("k1")))
        assert response.status_code == 200
    assert idp.fetches == 1  # cached


def test_unknown_kid_is_401(jwks_client: TestClient, idp: Provider) -> None:
    idp.add("rogue", publish=False)
    response = jwks_client.get("/api/messages", headers=bearer(idp.token("rogue")))
    assert response.status_code == 401


def test_provider_down_at_first_use_is_503(jwks_client: TestClient, idp: Provider) -> None:
    idp.down = True
    response = jwks_client.get("/api/messages", headers=bearer(idp.token("k1")))
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    assert "key set" in response.json()["detail"]


def test_unreachable_provider_is_503(make_app: AppFactory, idp: Provider) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    auth = AuthSettings(mode="jwks", jwks_url=URL)
    client = TestClient(make_app(auth_settings=auth, http_client=mock_client(refuse)))
    assert client.get("/api/messages", headers=bearer(idp.token("k1"))).status_code == 503


def test_rotation_new_kid_triggers_one_refetch(keys: JwksKeys, idp: Provider, clock: Clock) -> None:
    keys.key_for("RS256", "k1")
    idp.add("k2")
    clock.now += MIN_REFETCH_S
    assert keys.key_for("RS256", "k2") is not None
    assert idp.fetches == 2


def test_unknown_kids_cannot_hammer_the_provider(
    keys: JwksKeys, idp: Provider, clock: Clock
) -> None:
    keys.key_for("RS256", "k1")
    for n in range(5):
        with pytest.raises(TokenKeyError):
            keys.key_for("RS256", f"nope-{n}")
    assert idp.fetches == 1  # within MIN_REFETCH_S of the last fetch
    clock.now += MIN_REFETCH_S
    with pytest.raises(TokenKeyError):
        keys.key_for("RS256", "nope")
    assert idp.fetches == 2


def test_ttl_expiry_refetches_and_drops_retired_keys(
    keys: JwksKeys, idp: Provider, clock: Clock
) -> None:
    keys.key_for("RS256", "k1")
    idp.add("k2")
    idp.published.remove("k1")
    clock.now += 301
    assert keys.key_for("RS256", "k2") is not None
    with pytest.raises(TokenKeyError):
        keys.key_for("RS256", "k1")


def test_stale_keys_serve_while_the_provider_is_down_then_expire(
    keys: JwksKeys, idp: Provider, clock: Clock
) -> None:
    keys.key_for("RS256", "k1")
    idp.down = True
    clock.now += 301
    assert keys.key_for("RS256", "k1") is not None  # last good set
    clock.now += STALE_GRACE_S
    with pytest.raises(KeysUnavailable):
        keys.key_for("RS256", "k1")
    with pytest.raises(KeysUnavailable):  # and no new fetch for a moment
        keys.key_for("RS256", "k1")
    fetches = idp.fetches
    idp.down = False
    clock.now += MIN_REFETCH_S
    assert keys.key_for("RS256", "k1") is not None and idp.fetches == fetches + 1


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"keys": "no"}', b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'],
)
def test_bad_key_sets_are_unavailable(keys: JwksKeys, idp: Provider, body: bytes) -> None:
    idp.body = body
    with pytest.raises(KeysUnavailable):
        keys.key_for("RS256", "k1")


def test_oversized_key_set_is_unavailable(keys: JwksKeys, idp: Provider) -> None:
    idp.body = b'{"keys": [' + b" " * 300_000 + b"]}"
    with pytest.raises(KeysUnavailable, match="256 KiB"):
        keys.key_for("RS256", "k1")


def test_kid_is_optional_only_when_one_key_fits(keys: JwksKeys, idp: Provider) -> None:
    assert keys.key_for("RS256", None) is not None
    idp.add("k2")
    fresh = JwksKeys(URL, algorithms=["RS256"], client=mock_client(idp.handler))
    with pytest.raises(TokenKeyError):
        fresh.key_for("RS256", None)


def test_key_type_and_alg_must_fit_the_token(keys: JwksKeys, idp: Provider) -> None:
    idp.add("ec1", ec.generate_private_key(ec.SECP256R1()))
    assert keys.key_for("ES256", "ec1") is not None
    with pytest.raises(TokenKeyError):
        keys.key_for("ES256", "k1")  # an RSA key for an EC algorithm
    with pytest.raises(TokenKeyError):
        keys.key_for("RS256", "ec1")
    with pytest.raises(TokenKeyError):
        keys.key_for("HS256", "k1")


def test_es256_token_through_the_app(jwks_client: TestClient, idp: Provider) -> None:
    idp.add("ec1", ec.generate_private_key(ec.SECP256R1()))
    token = idp.token("ec1", alg="ES256")
    assert jwks_client.get("/api/messages", headers=bearer(token)).status_code == 200


def test_a_jwks_http_url_is_fine_in_development(tmp_path: Path) -> None:
    AuthSettings(mode="jwks", jwks_url="http://localhost:8081/jwks")
