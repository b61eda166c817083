"""The browser the console's tests drive opens a page the engine serves (the login page once it
exists; here the shell's stylesheet), so a missing chromium fails here first, by name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from tests.serve_support import free_port


@pytest.fixture
def served(make_app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_chromium_loads_a_page_the_engine_serves(page: Any, served: str) -> None:
    answer = page.goto(f"{served}/console/static/console.css")
    assert answer is not None and answer.status == 200
    assert "no framework" in page.content()
