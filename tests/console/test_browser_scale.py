"""``/docs`` in a real browser, under the engine's Content-Security-Policy: the page loads with
its stylesheet, the browser reports no CSP violation and fetches nothing but the engine."""

from __future__ import annotations

from typing import Any


def test_docs_renders_under_the_csp_from_the_engine_alone(page: Any, served: str) -> None:
    console: list[str] = []
    fetched: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.on("request", lambda request: fetched.append(request.url))
    answer = page.goto(f"{served}/docs")
    assert answer is not None and answer.status == 200
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    page.wait_for_load_state("networkidle")
    assert page.locator("#get-api-messages h2").inner_text() == "GET /api/messages"
    # the console's stylesheet applied (a page without it keeps the browser's default margin)
    assert page.evaluate("document.styleSheets.length") == 1
    assert page.evaluate("document.styleSheets[0].cssRules.length") > 0
    assert not [text for text in console if "Content Security Policy" in text], console
    assert all(url.startswith(served) for url in fetched), fetched
