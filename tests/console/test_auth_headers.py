"""Security headers on every answer, console and API alike (engine/api/security.py): a CSP
without inline script, frame denial, nosniff, no referrer; no-store on console pages (not their
static files); HSTS only under TLS (tests/console/test_auth_tls.py shows it there)."""

from __future__ import annotations

import pytest

from engine.api.security import CSP
from tests.api.conftest import TestClient, bearer


@pytest.mark.parametrize(
    "path", ["/healthz", "/console/login", "/console/static/console.css", "/api/messages", "/nope"]
)
def test_every_answer_carries_the_headers(client: TestClient, path: str) -> None:
    answer = client.get(path, follow_redirects=False)
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in answer.headers  # plain HTTP


def test_console_pages_are_not_cached_but_static_files_may_be(client: TestClient) -> None:
    assert client.get("/console/login").headers["cache-control"] == "no-store"
    assert client.get("/console/users", follow_redirects=False).headers["cache-control"] == (
        "no-store"
    )
    assert "no-store" not in client.get("/console/static/console.css").headers.get(
        "cache-control", ""
    )


def test_the_csp_forbids_inline_script_and_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["script-src"] == "'self'" and "unsafe-inline" not in CSP
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self'"


def test_api_tokens_work_as_before(client: TestClient, token) -> None:  # type: ignore[no-untyped-def]
    answer = client.get("/api/messages", headers=bearer(token("viewer")))
    assert answer.status_code == 200
    assert answer.headers["x-frame-options"] == "DENY"
    assert client.get("/api/messages").status_code == 401
