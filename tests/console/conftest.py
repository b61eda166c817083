"""The console's browser: Playwright driving Debian's chromium (/usr/bin/chromium; `.ci/run`
installs it with apt-get where it is missing; Playwright never downloads a browser here).

Playwright's sync API keeps an event loop running in the main thread while the browser is open:
a test that calls ``asyncio.run`` then fails. So the browser lives for one module, and browser
tests go in modules of their own (``test_browser_*.py``), never beside other tests.

``page`` is a fresh browser context's page; when its test ends, a screenshot of where it stands
goes to ``test-artifacts/console/<test>.png`` (the artifacts CI keeps), pass or fail.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

# the API's app on in-memory fakes, for pages tested without a browser
from tests.api.conftest import (  # noqa: F401
    auth,
    client,
    health,
    ingest,
    make_app,
    messages,
    metrics,
    settings,
    token,
)
from tests.serve_support import free_port

CHROMIUM = os.environ.get("ENGINE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
#: as the machine's own check starts it: no sandbox (root), nothing fetched from outside
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture
def served(make_app: Any) -> Iterator[str]:  # noqa: F811 (the fixture, imported above)
    """The API's app on the fakes, served by a real uvicorn on a free loopback port."""
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


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"chromium not found at {CHROMIUM}: apt-get install chromium (the README says how)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])[:120]
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        except Exception:  # a page already closed: no screenshot, the test's own result stands
            pass
        context.close()
