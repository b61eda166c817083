"""``/docs`` and the OpenAPI document's security: the scheme (HTTP bearer JWT), each operation's
requirement and refusals, and a reference page rendered on the server with no script and no
asset from anywhere but the engine."""

from __future__ import annotations

import re

from engine.api.docs import SCHEME, render_docs
from tests.api.conftest import TestClient


def test_the_document_declares_the_bearer_scheme_and_each_operations_role(
    client: TestClient,
) -> None:
    document = client.get("/openapi.json").json()  # open, as before
    scheme = document["components"]["securitySchemes"][SCHEME]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    paths = document["paths"]
    assert paths["/api/messages"]["get"]["security"] == [{SCHEME: ["viewer"]}]
    assert paths["/hl7v2"]["post"]["security"] == [{SCHEME: ["integration"]}]
    assert paths["/api/messages/{message_id}/replay"]["post"]["security"] == [{SCHEME: ["admin"]}]
    assert paths["/api/admin/reload"]["post"]["security"] == [{SCHEME: ["admin"]}]
    for open_path in ("/healthz", "/readyz", "/.well-known/jwks.json", "/metrics"):
        assert paths[open_path]["get"]["security"] == [], open_path
    listed = paths["/api/messages"]["get"]["responses"]
    assert {"401", "403", "422", "4XX"} <= set(listed)
    assert listed["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Unprocessable"
    }


def test_every_operation_that_reads_a_token_declares_it(client: TestClient) -> None:
    """An operation without ``security`` would be one the document forgot, not an open one."""
    document = client.get("/openapi.json").json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "security" in operation, f"{method.upper()} {path}"
            if operation["security"]:
                assert "401" in operation["responses"], f"{method.upper()} {path}"


def test_metrics_behind_a_token_is_declared_so(make_app, auth) -> None:  # type: ignore[no-untyped-def]
    app = make_app(auth_settings=auth.model_copy(update={"metrics_require_token": True}))
    document = TestClient(app).get("/openapi.json").json()
    assert document["paths"]["/metrics"]["get"]["security"] == [{SCHEME: ["viewer"]}]


def test_docs_is_served_without_a_token_script_or_outside_asset(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script" not in html.lower() and "<style" not in html.lower()
    assert " style=" not in html and "javascript:" not in html.lower()
    # every link and stylesheet is the engine's own (a path, never a host)
    for url in re.findall(r'(?:href|src)="([^"]*)"', html):
        assert url.startswith("/") or url.startswith("#"), url
    assert "<code>GET /api/messages</code>" in html
    assert "with the role\nviewer (or admin)" in html
    assert "Open: no token needed." in html  # /healthz


def test_the_page_escapes_what_the_document_says() -> None:
    document = {
        "openapi": "3.1.0",
        "info": {"title": "<b>t</b>", "version": "1"},
        "paths": {
            "/x": {
                "get": {
                    "summary": "<script>alert(1)</script>",
                    "security": [],
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }
    html = render_docs(document)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html
