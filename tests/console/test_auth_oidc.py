"""Logging in to the console through OpenID Connect, end to end against a real provider: a stub
on 127.0.0.1, written here (the browser test uses it too).

The stub serves discovery, JWKS, an authorization endpoint that consents at once (302 back with
a code), and a token endpoint that checks the client's secret, the code's redirect URI and the
PKCE verifier (S256) before it signs an ID token with a key made here. Knobs (``claims``,
``sign_with``, ``alg``...) let a test make the provider misbehave; ``seen`` keeps what it was
asked."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from engine.store import SqlMessageStore, Who
from engine.store.users import hash_password
from tests.api.conftest import TestClient
from tests.console.test_auth_sessions import AppMaker
from tests.console.test_auth_sessions import make_console as make_console  # noqa: F401


@dataclass
class StubProvider:
    """What the provider does; a test changes it between logins."""

    base_url: str = ""
    client_id: str = "engine-console"
    client_secret: str = "stub client secret"
    username: str = "ada.oidc"
    roles: list[str] = field(default_factory=lambda: ["engine-admins", "viewer", "payroll"])
    #: claims laid over the ID token's (``{"nonce": "x"}``; a value None drops the claim)
    claims: dict[str, Any] = field(default_factory=dict)
    key: RSAKey = field(default_factory=lambda: _rsa("k1"))
    #: the key that signs (another one than ``key`` makes the signature wrong)
    sign_with: RSAKey | OctKey | None = None
    alg: str = "RS256"
    #: what /authorize answers instead of a code (``access_denied``)
    refuse: str | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def rotate(self, kid: str) -> None:
        self.key = _rsa(kid)

    def id_token(self, grant: dict[str, str]) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.base_url,
            "aud": self.client_id,
            "sub": "sub-" + self.username,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            "preferred_username": self.username,
            "roles": self.roles,
        }
        claims.update(self.claims)
        claims = {k: v for k, v in claims.items() if v is not None}
        signer = self.sign_with or self.key
        header = {"alg": self.alg, "kid": self.key.kid}
        return jwt.encode(header, claims, signer, algorithms=[self.alg])


def _rsa(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class _Handler(BaseHTTPRequestHandler):
    provider: StubProvider

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        p = self.provider
        url = urlsplit(self.path)
        if url.path == "/.well-known/openid-configuration":
            self._json(
                200,
                {
                    "issuer": p.base_url,
                    "authorization_endpoint": f"{p.base_url}/authorize",
                    "token_endpoint": f"{p.base_url}/token",
                    "jwks_uri": f"{p.base_url}/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                },
            )
        elif url.path == "/jwks":
            self._json(200, KeySet([p.key]).as_dict(private=False))
        elif url.path == "/authorize":
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            p.seen.append({"authorize": query})
            back = query.get("redirect_uri", "")
            if p.refuse:
                answer = {"error": p.refuse, "state": query.get("state", "")}
            else:
                code = secrets.token_urlsafe(16)
                p.codes[code] = query
                answer = {"code": code, "state": query.get("state", "")}
            self.send_response(302)
            self.send_header("Location", f"{back}?{urlencode(answer)}")
            self.end_headers()
        else:
            self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        p = self.provider
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        p.seen.append({"token": form, "authorization": self.headers.get("Authorization", "")})
        expected = base64.b64encode(f"{p.client_id}:{p.client_secret}".encode()).decode()
        if self.headers.get("Authorization") != f"Basic {expected}":
            self._json(401, {"error": "invalid_client"})
            return
        grant = p.codes.pop(form.get("code", ""), None)  # a code is good once
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("redirect_uri") != grant.get("redirect_uri")
            or grant.get("code_challenge_method") != "S256"
            or _s256(form.get("code_verifier", "")) != grant.get("code_challenge")
        ):
            self._json(400, {"error": "invalid_grant"})
            return
        self._json(
            200,
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": p.id_token(grant),
            },
        )


@contextmanager
def running_provider() -> Iterator[StubProvider]:
    provider = StubProvider()
    handler = type("Handler", (_Handler,), {"provider": provider})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    provider.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the tests ------------------------------------------------------------------------------

PASSWORD = "correct horse battery"


@pytest.fixture
def provider() -> Iterator[StubProvider]:
    with running_provider() as running:
        yield running


@pytest.fixture
def make_oidc_console(
    make_console: AppMaker, tmp_path: Path, provider: StubProvider
) -> Callable[..., FastAPI]:
    secret = tmp_path / "oidc-secret"
    secret.write_text(provider.client_secret + "\n")

    def build(**overrides: Any) -> FastAPI:
        settings = {
            "oidc_issuer": provider.base_url,
            "oidc_client_id": provider.client_id,
            "oidc_client_secret_file": secret,
            "oidc_role_map": {"engine-admins": "admin", "viewer": "viewer"},
            "oidc_name": "Stub IdP",
            **overrides,
        }
        return make_console(**settings)

    return build


def oidc_login(client: TestClient, next_path: str = "/console/_whoami") -> Any:
    """Through the provider and back; the console's last answer."""
    out = client.get(f"/console/login/oidc?next={next_path}", follow_redirects=False)
    assert out.status_code == 303, out.text
    assert out.headers["location"].startswith("http://127.0.0.1:")
    at_provider = httpx.get(out.headers["location"], follow_redirects=False, timeout=10)
    assert at_provider.status_code == 302
    back = urlsplit(at_provider.headers["location"])
    assert back.path == "/console/login/oidc/callback"
    return client.get(f"{back.path}?{back.query}", follow_redirects=False)


def test_the_login_page_offers_the_provider(make_oidc_console: Callable[..., FastAPI]) -> None:
    page = TestClient(make_oidc_console()).get("/console/login?next=/console/x").text
    assert "Log in with Stub IdP" in page
    assert 'href="/console/login/oidc?next=/console/x"' in page


def test_a_login_through_the_provider(
    make_oidc_console: Callable[..., FastAPI], provider: StubProvider, store: SqlMessageStore
) -> None:
    client = TestClient(make_oidc_console())
    answer = oidc_login(client)
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/_whoami")
    assert client.get("/console/_whoami").json() == {
        "user": "ada.oidc",
        "roles": ["admin", "viewer"],
    }
    asked = provider.seen[0]["authorize"]
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["nonce"] and asked["state"] and asked["scope"] == "openid profile email"
    assert "code_verifier" not in asked
    user = store.get_user("ada.oidc")
    assert user is not None and (user.origin, user.has_password) == ("oidc", False)
    trail = [(e.action, e.actor, e.detail) for e in reversed(store.audit_entries(limit=20))]
    assert ("login", "ada.oidc", "by oidc") in trail
    assert trail[0][0] == "user-add" and trail[0][1] == "oidc:ada.oidc"
    # the provider's roles win at the next login
    provider.roles = ["viewer"]
    assert oidc_login(TestClient(make_oidc_console())).status_code == 303
    assert store.get_user("ada.oidc").roles == ("viewer",)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"claims": {"nonce": "another"}}, "the ID token does not hold (invalid_claim)"),
        ({"claims": {"aud": "someone-else"}}, "the ID token does not hold (invalid_claim)"),
        ({"claims": {"iss": "http://127.0.0.1:1"}}, "the ID token does not hold (invalid_claim)"),
        ({"claims": {"exp": 1_000_000}}, "the ID token does not hold (expired_token)"),
        ({"claims": {"nonce": None}}, "the ID token does not hold (missing_claim)"),
        ({"sign_with": "other"}, "the ID token does not hold (bad_signature)"),
        ({"alg": "HS256"}, "the ID token does not hold (unsupported_algorithm)"),
        ({"claims": {"aud": ["engine-console", "x"]}}, "several clients"),
        ({"roles": ["payroll"]}, "ada.oidc has no engine role at the provider"),
        ({"refuse": "access_denied"}, "the provider said access_denied"),
    ],
)
def test_an_answer_that_does_not_hold_is_refused(
    make_oidc_console: Callable[..., FastAPI],
    provider: StubProvider,
    store: SqlMessageStore,
    change: dict[str, Any],
    words: str,
) -> None:
    for name, value in change.items():
        if name == "sign_with":
            value = _rsa(provider.key.kid or "k1")
        elif name == "alg":
            provider.sign_with = OctKey.import_key(provider.client_secret.encode())
        elif name == "claims":
            value = {**value}
        setattr(provider, name, value)
    client = TestClient(make_oidc_console())
    answer = oidc_login(client)
    assert answer.status_code == 401
    assert words in answer.text
    assert "engine_session" not in client.cookies
    [failed] = [e for e in store.audit_entries(limit=20) if e.action == "login-failed"]
    assert failed.outcome == "refused" and words in (failed.detail or "")


def test_a_wrong_state_or_a_foreign_callback_is_refused(
    make_oidc_console: Callable[..., FastAPI],
) -> None:
    client = TestClient(make_oidc_console())
    out = client.get("/console/login/oidc", follow_redirects=False)
    back = urlsplit(httpx.get(out.headers["location"]).headers["location"])
    query = {k: v[0] for k, v in parse_qs(back.query).items()}
    forged = client.get(
        f"{back.path}?{urlencode({**query, 'state': 'forged'})}", follow_redirects=False
    )
    assert forged.status_code == 401 and "state is not this login" in forged.text
    # another browser (no flow cookie) cannot use the code either
    stranger = TestClient(make_oidc_console())
    answer = stranger.get(f"{back.path}?{back.query}", follow_redirects=False)
    assert answer.status_code == 401 and "began elsewhere" in answer.text


def test_a_provider_user_cannot_take_over_a_local_one(
    make_oidc_console: Callable[..., FastAPI], provider: StubProvider, store: SqlMessageStore
) -> None:
    store.add_user(
        "ada.oidc", ["viewer"], Who("root", "cli"), password_hash=hash_password(PASSWORD)
    )
    answer = oidc_login(TestClient(make_oidc_console()))
    assert answer.status_code == 401 and "user ada.oidc is a local user" in answer.text


def test_a_disabled_provider_user_is_refused(
    make_oidc_console: Callable[..., FastAPI], store: SqlMessageStore
) -> None:
    assert oidc_login(TestClient(make_oidc_console())).status_code == 303
    store.set_disabled("ada.oidc", True, Who("root", "cli"))
    answer = oidc_login(TestClient(make_oidc_console()))
    assert answer.status_code == 401 and "ada.oidc is disabled here" in answer.text


def test_rotated_keys_are_fetched_again(
    make_oidc_console: Callable[..., FastAPI], provider: StubProvider
) -> None:
    app = make_oidc_console()
    assert oidc_login(TestClient(app)).status_code == 303
    provider.rotate("k2")
    assert oidc_login(TestClient(app)).status_code == 303


def test_an_issuer_over_plain_http_elsewhere_is_refused(
    make_oidc_console: Callable[..., FastAPI],
) -> None:
    client = TestClient(make_oidc_console(oidc_issuer="http://idp.example.org"))
    answer = client.get("/console/login/oidc", follow_redirects=False)
    assert answer.status_code == 401 and "not at an https URL" in answer.text
