"""``GET /.well-known/jwks.json``: the engine's own public signing keys, open to any verifier."""

from __future__ import annotations

from collections.abc import Callable

from jose import jwt

from engine.api.routes_jwks import MAX_AGE_S
from engine.keys import Keyring, client_assertion, keyring_for
from engine.settings import Settings
from tests.api.conftest import TestClient, bearer

PATH = "/.well-known/jwks.json"


def _keyring(settings: Settings) -> Keyring:
    keyring: Keyring = keyring_for(settings)
    return keyring


def test_no_keys_is_an_empty_set(client: TestClient) -> None:
    answer = client.get(PATH)
    assert answer.status_code == 200 and answer.json() == {"keys": []}


def test_active_and_previous_keys_are_published_without_a_token(
    client: TestClient, settings: Settings
) -> None:
    keyring = _keyring(settings)
    first = keyring.create("RS384")
    second, _ = keyring.rotate("ES384")
    answer = client.get(PATH)  # no Authorization header: Epic fetches it anonymously
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == f"public, max-age={MAX_AGE_S}"
    assert MAX_AGE_S <= 300
    rsa_key, ec_key = answer.json()["keys"]
    assert rsa_key["kid"] == first.kid and ec_key["kid"] == second.kid
    assert {rsa_key["alg"], ec_key["alg"]} == {"RS384", "ES384"}
    assert set(rsa_key) == {"kty", "kid", "alg", "use", "n", "e"}
    assert set(ec_key) == {"kty", "kid", "alg", "use", "crv", "x", "y"}
    assert rsa_key["use"] == ec_key["use"] == "sig"

    keyring.retire(first.kid)
    assert [k["kid"] for k in client.get(PATH).json()["keys"]] == [second.kid]


def test_an_assertion_verifies_with_the_served_key_set(
    client: TestClient, settings: Settings
) -> None:
    keyring = _keyring(settings)
    keyring.create("ES384")
    token = client_assertion(keyring, "client-1", "https://ehr.example.test/token")
    served = client.get(PATH).json()
    claims = jwt.decode(
        token, served, algorithms=["ES384"], audience="https://ehr.example.test/token"
    )
    assert claims["sub"] == "client-1"


def test_a_damaged_index_answers_503_without_detail(client: TestClient, settings: Settings) -> None:
    keyring = _keyring(settings)
    keyring.create("ES384")
    keyring.index.write_text("{broken")
    answer = client.get(PATH)
    assert answer.status_code == 503 and answer.json() == {"detail": "signing keys unavailable"}
    assert str(keyring.index) not in answer.text


def test_the_api_still_wants_tokens_elsewhere(
    client: TestClient, token: Callable[[str], str]
) -> None:
    assert client.get("/api/messages").status_code == 401
    assert client.get("/api/messages", headers=bearer(token("viewer"))).status_code == 200
