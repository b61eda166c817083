"""Logins cannot starve the engine (issue 13, H3): password checks run at most two at once in
their own threads, a login that waits too long for one gets 429 with Retry-After, failures are
counted per peer (unknown user names too) and a peer over its budget gets 429 before any hash,
while a logged-in user's pages keep answering."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

import engine.console.pages_auth as pages_auth
import engine.store.users as users_module
from engine.store import SqlMessageStore
from tests.api.conftest import TestClient
from tests.console.test_auth_sessions import (  # noqa: F401 (fixtures)
    PASSWORD,
    AppMaker,
    ada,
    form_token,
    log_in,
    make_console,
)


class InFlight:
    """Wraps the store's password check: the most checks at once, and the threads used."""

    def __init__(self, pause: float) -> None:
        self.now = 0
        self.most = 0
        self.calls = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()
        self.pause = pause
        self.inner = users_module._verify

    def __call__(self, hashed: str | None, password: str) -> bool:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(self.pause)
            return self.inner(hashed, password)
        finally:
            with self.lock:
                self.now -= 1


def test_thirty_logins_at_once_get_two_checks_at_a_time_and_429(
    make_console: AppMaker,  # noqa: F811
    ada: str,  # noqa: F811
    store: SqlMessageStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pages_auth, "HASH_WAIT_S", 0.6)
    app = make_console()
    client = TestClient(app)
    assert log_in(client, "ada", PASSWORD)[0] == 303
    session = client.cookies["engine_session"]
    page = client.get("/console/login")
    token, login_cookie = form_token(page.text), client.cookies["engine_login"]
    flight = InFlight(pause=0.3)
    monkeypatch.setattr(users_module, "_verify", flight)

    async def burst() -> tuple[list[httpx.Response], float, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as anon:

            async def attempt(i: int) -> httpx.Response:
                return await anon.post(
                    "/console/login",
                    data={
                        "username": f"nobody{i}",
                        "password": "guess guess 1",
                        "csrf_token": token,
                    },
                    headers={"Cookie": f"engine_login={login_cookie}"},
                )

            async def page_meanwhile() -> tuple[float, int]:
                await asyncio.sleep(0.2)
                started = time.monotonic()
                answer = await anon.get(
                    "/console/_whoami", headers={"Cookie": f"engine_session={session}"}
                )
                return time.monotonic() - started, answer.status_code

            meanwhile = asyncio.create_task(page_meanwhile())
            answers = await asyncio.gather(*(attempt(i) for i in range(30)))
            took, status = await meanwhile
        return list(answers), took, status

    answers, took, status = asyncio.run(burst())
    assert status == 200 and took < 0.5
    assert flight.most <= 2
    assert all(name.startswith("console-login") for name in flight.threads)
    codes = [a.status_code for a in answers]
    assert set(codes) <= {401, 429} and codes.count(429) >= 10
    assert all(a.headers["Retry-After"].isdigit() for a in answers if a.status_code == 429)
    assert flight.calls == codes.count(401)


def test_a_peer_over_its_failure_budget_gets_429_before_any_hash(
    make_console: AppMaker,  # noqa: F811
    ada: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pages_auth, "PEER_BURST", 3)
    monkeypatch.setattr(pages_auth, "PEER_REFILL_S", 600.0)
    client = TestClient(make_console())
    for i in range(3):  # unknown names count too
        assert log_in(client, f"stranger{i}", "guess guess 1")[0] == 401
    flight = InFlight(pause=0.0)
    monkeypatch.setattr(users_module, "_verify", flight)
    page = client.get("/console/login")
    answer = client.post(
        "/console/login",
        data={"username": "ada", "password": PASSWORD, "csrf_token": form_token(page.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
    assert flight.calls == 0
