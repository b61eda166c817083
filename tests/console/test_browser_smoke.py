"""The browser the console's tests drive opens a page the engine serves (the login page once it
exists; here the shell's stylesheet), so a missing chromium fails here first, by name."""

from __future__ import annotations

from typing import Any


def test_chromium_loads_a_page_the_engine_serves(page: Any, served: str) -> None:
    answer = page.goto(f"{served}/console/static/console.css")
    assert answer is not None and answer.status == 200
    assert "no framework" in page.content()
