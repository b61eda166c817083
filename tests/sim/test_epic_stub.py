"""The stub Epic's SMART Backend Services rules, checked with hand-made client assertions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jose import jwt

from engine.keys import CLIENT_ASSERTION_TYPE, Keyring, client_assertion
from engine.sim.epic import StubEpicServer
from tests.sim.epic_support import epic_with_client

CLIENT = "engine-test-client"


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    ring = Keyring(tmp_path_factory.mktemp("home") / "var" / "keys")
    ring.create("ES384")
    return ring


@pytest.fixture(scope="module")
def epic_server(keyring: Keyring) -> Iterator[StubEpicServer]:
    with epic_with_client(keyring, CLIENT) as epic:
        yield epic


@pytest.fixture
def epic(epic_server: StubEpicServer) -> StubEpicServer:
    epic_server.state.token_failures.clear()
    return epic_server


def signed(keyring: Keyring, headers: dict[str, Any] | None = None, **claims: Any) -> str:
    key = keyring.active()
    now = int(time.time())
    body = {
        "iss": CLIENT,
        "sub": CLIENT,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 240,
        **claims,
    }
    return str(
        jwt.encode(body, key.key, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})})
    )


def ask(epic: StubEpicServer, assertion: str, **form: str) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": "system/*.write",
        **form,
    }
    return httpx.post(epic.token_url, data=data)


def test_smart_configuration_names_the_token_endpoint(epic: StubEpicServer) -> None:
    conf = httpx.get(epic.base_url + "/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == epic.token_url
    assert conf["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert conf["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]


def test_a_good_assertion_gets_a_token_that_opens_the_fhir_api(
    epic: StubEpicServer, keyring: Keyring
) -> None:
    assert httpx.get(epic.base_url + "/Patient?identifier=X").status_code == 401
    resp = ask(epic, client_assertion(keyring, CLIENT, epic.token_url))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/*.write"
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(epic.base_url + "/Patient?identifier=X", headers=auth).status_code == 200
    epic.state.revoke_tokens()
    assert httpx.get(epic.base_url + "/Patient?identifier=X", headers=auth).status_code == 401


@pytest.mark.parametrize(
    ("headers", "claims", "why"),
    [
        ({"kid": "not-a-known-kid"}, {}, "kid"),
        ({}, {"aud": "http://127.0.0.1:1/oauth2/token"}, "claims"),
        # times as offsets from when the test runs (a parameter is made at collection, which
        # in a long run is half an hour earlier: an exp 10 minutes ahead had passed by then)
        ({}, {"iat": -600, "exp": -300}, "expired"),
        ({}, {"exp": 600}, "5 minutes"),
        ({}, {"sub": "someone-else"}, "sub"),
        ({}, {"iss": "not-registered", "sub": "not-registered"}, "registered"),
    ],
)
def test_bad_assertions_are_refused(
    epic: StubEpicServer,
    keyring: Keyring,
    headers: dict[str, Any],
    claims: dict[str, Any],
    why: str,
) -> None:
    now = int(time.time())
    claims = {k: now + v if k in ("iat", "exp") else v for k, v in claims.items()}
    claims.setdefault("aud", epic.token_url)
    resp = ask(epic, signed(keyring, headers, **claims))
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_client"
    assert why in resp.json()["error_description"]


def test_a_replayed_jti_is_refused(epic: StubEpicServer, keyring: Keyring) -> None:
    assertion = signed(keyring, aud=epic.token_url)
    assert ask(epic, assertion).status_code == 200
    again = ask(epic, assertion)
    assert again.status_code == 400
    assert "replay" in again.json()["error_description"]


def test_only_rs384_and_es384(epic: StubEpicServer, keyring: Keyring, tmp_path: Path) -> None:
    hs = jwt.encode(
        {"iss": CLIENT, "sub": CLIENT, "aud": epic.token_url, "jti": "x", "exp": 9999999999},
        "secret",
        algorithm="HS256",
        headers={"kid": keyring.active().kid},
    )
    resp = ask(epic, hs)
    assert resp.status_code == 400
    assert "alg" in resp.json()["error_description"]


def test_a_wrong_signature_is_refused(
    epic: StubEpicServer, keyring: Keyring, tmp_path: Path
) -> None:
    other = Keyring(tmp_path / "keys")
    other.create("ES384")
    forged = signed(other, {"kid": keyring.active().kid}, aud=epic.token_url)
    resp = ask(epic, forged)
    assert resp.status_code == 400
    assert "signature" in resp.json()["error_description"]


def test_the_form_must_be_client_credentials_with_a_jwt_bearer_assertion(
    epic: StubEpicServer, keyring: Keyring
) -> None:
    good = signed(keyring, aud=epic.token_url)
    assert ask(epic, good, grant_type="password").json()["error"] == "unsupported_grant_type"
    assert ask(epic, good, client_assertion_type="x").json()["error"] == "invalid_request"
    assert ask(epic, "").json()["error"] == "invalid_request"


def test_token_requests_are_counted_and_failures_injected(
    epic: StubEpicServer, keyring: Keyring
) -> None:
    before = epic.state.token_requests
    epic.state.fail_token_next(400, "invalid_client")
    resp = ask(epic, signed(keyring, aud=epic.token_url))
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_client")
    assert epic.state.token_requests == before + 1


def test_an_expired_token_is_refused(epic: StubEpicServer, keyring: Keyring) -> None:
    token = ask(epic, signed(keyring, aud=epic.token_url)).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(epic.base_url + "/Patient?identifier=X", headers=auth).status_code == 200
    with epic.state.lock:
        epic.state.tokens[token] = time.time() - 1
    assert httpx.get(epic.base_url + "/Patient?identifier=X", headers=auth).status_code == 401
