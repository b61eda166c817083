"""A real ``engine serve`` for the console's browser tests, its users, and logging in.

Use it like this (in a ``tests/console/test_browser_<yours>.py`` module, with the ``page``
fixture of tests/console/conftest.py)::

    from tests.console.support import console_engine, login

    def test_something(page, tmp_path):
        with console_engine(tmp_path, env={"ENGINE_CONSOLE_IDLE_MINUTES": "5"}) as engine:
            engine.add_user("ada", "correct horse battery", "admin")      # roles: one or more
            login(page, engine.base_url, "ada", "correct horse battery")  # through the real form
            page.goto(f"{engine.base_url}/console/messages")
            ...

- :func:`console_engine` starts ``engine serve`` (tests/serve_support.Engine) with its home and
  var folder ``tmp_path/var``, routes from ``routes`` (a folder; default: one empty route file,
  so nothing is delivered anywhere) and ``env`` (any ENGINE_* settings: ENGINE_DATABASE_URL for
  PostgreSQL, ENGINE_CONSOLE_IDLE_MINUTES, ENGINE_HTTP_TLS_CERT/KEY ...); it waits until HTTP
  answers and stops the engine after. ``engine.base_url`` is ``http(s)://127.0.0.1:<port>``,
  ``engine.mllp`` its MLLP port (feed it with tests.serve_support.send_stream).
- :meth:`ConsoleEngine.add_user` runs the real CLI, ``engine users add NAME --role R
  --password-stdin``, against that engine's home (its database, whatever it is).
- :meth:`ConsoleEngine.cli` runs any other ``engine`` command there (returns the result).
- :func:`login` opens ``/console/login``, fills the form and submits it, and waits until the
  browser left the login page (an AssertionError with the page's error text otherwise).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.serve_support import Engine

__all__ = ["ConsoleEngine", "console_engine", "login"]


class ConsoleEngine(Engine):
    """``engine serve`` with a console: its base URL, and users added through the CLI."""

    @property
    def tls(self) -> bool:
        return "ENGINE_HTTP_TLS_CERT" in self.env

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http}"

    def environment(self) -> dict[str, str]:
        """The environment the engine runs with (for a CLI command against its home)."""
        return {
            **os.environ,
            "ENGINE_HOME": str(self.var),
            "ENGINE_VAR_DIR": str(self.var),
            "ENGINE_ROUTES_DIR": str(self.routes),
            "ENGINE_LOG_LEVEL": "WARNING",
            **self.env,
        }

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``engine ARGS`` against this engine's home (not checked: look at returncode)."""
        return subprocess.run(
            [sys.executable, "-m", "engine", *args],
            env=self.environment(),
            cwd=self.var,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def add_user(self, username: str, password: str, *roles: str) -> None:
        """``engine users add USERNAME --role R ... --password-stdin``; fails the test if the
        CLI refuses."""
        args = ["users", "add", username, "--password-stdin"]
        for role in roles or ("admin",):
            args += ["--role", role]
        done = self.cli(*args, stdin=password + "\n")
        assert done.returncode == 0, f"engine users add failed: {done.stderr.strip()}"

    def wait_http(self, timeout: float = 30) -> None:
        """Until ``/healthz`` answers (MLLP listens a moment before HTTP does)."""
        context = ssl._create_unverified_context() if self.tls else None
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(
                    f"{self.base_url}/healthz", timeout=2, context=context
                ) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise AssertionError(
                        f"HTTP did not answer; the engine's log ends:\n{tail}"
                    ) from None
                time.sleep(0.1)


@contextmanager
def console_engine(
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    routes: Path | None = None,
) -> Iterator[ConsoleEngine]:
    """A running ``engine serve`` (home ``tmp_path/var``), stopped after."""
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    if routes is None:
        routes = tmp_path / "routes"
        routes.mkdir(exist_ok=True)
        (routes / "example.yaml").write_text("routes: []\n")
    engine = ConsoleEngine(var, routes, {"ENGINE_HOME": str(var), **(env or {})})
    engine.start()
    try:
        engine.wait_http()
        yield engine
    finally:
        engine.stop()


def login(page: Any, base_url: str, username: str, password: str) -> None:
    """Log in through the real login form; returns once the browser has left it."""
    page.goto(f"{base_url}/console/login")
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("form.login-form button[type=submit]")
    if "/console/login" in page.url:
        error = page.locator(".error").all_inner_texts()
        raise AssertionError(f"login as {username} failed: {' '.join(error) or page.url}")
