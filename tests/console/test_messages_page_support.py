"""The ops pages under test (owner: ops-pages): the real app on a real store (SQLite and
PostgreSQL) with the console's user given by the test and the CSRF check as the contract says
it (a wrong or missing token is refused), and messages made the way the engine makes them.

No test lives here: the page tests import these helpers.
"""

from __future__ import annotations

import hmac
import html as html_text
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from engine.api.app import create_app
from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.console.auth import ConsoleUser, check_csrf, current_console_user
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import Incoming, NewDelivery, Outcome, Processed, SqlMessageStore
from tests.api.conftest import TestClient
from tests.api.fakes import FakeHealth, FakeIngest

__all__ = ["TOKEN", "cells", "client_for", "dead_message", "ops_app", "text_of", "user"]

TOKEN = "csrf-token-of-the-ops-session"
ZONE = "America/New_York"

ER7 = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|C{n}|P|2.5.1\r"
    "EVN|A04|20260102030405\r"
    "PID|1||MRN{n}^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
    "PV1|1|O\r"
)


def user(*roles: Role, name: str = "olga") -> ConsoleUser:
    return ConsoleUser(name, frozenset(roles), "session-ops", TOKEN, "127.0.0.1:50000")


async def _csrf(request: Request) -> ConsoleUser:
    who = request.app.dependency_overrides[current_console_user]()
    form = await request.form()
    given = request.headers.get("x-csrf-token") or str(form.get("csrf_token") or "")
    if not hmac.compare_digest(given, who.csrf_token):
        raise HTTPException(403, detail="CSRF token missing or wrong")
    assert isinstance(who, ConsoleUser)
    return who


def ops_app(store: SqlMessageStore, tmp_path: Path, who: ConsoleUser, **settings: Any) -> FastAPI:
    """create_app on ``store``; ``who`` is logged in."""
    metrics = EngineMetrics()
    app = create_app(
        Settings(var_dir=tmp_path, timezone=ZONE, **settings),
        ingest=FakeIngest(metrics),
        messages=store,
        health=FakeHealth(),
        metrics=metrics,
        auth=AuthSettings(environment="development", dev_secret_file=tmp_path / "secret"),
    )
    overrides: dict[Callable[..., object], Callable[..., object]] = {
        current_console_user: lambda: who,
        check_csrf: _csrf,
    }
    app.dependency_overrides.update(overrides)
    return app


def client_for(store: SqlMessageStore, tmp_path: Path, *roles: Role) -> TestClient:
    return TestClient(ops_app(store, tmp_path, user(*roles)))


def dead_message(
    store: SqlMessageStore,
    n: int,
    *,
    destinations: tuple[str, ...] = ("fhir", "folder"),
    ok: tuple[str, ...] = ("folder",),
    mrn: str | None = None,
) -> int:
    """An ADT^A04 received over MLLP and routed to ``destinations``: those in ``ok`` delivered,
    the others dead with ``HTTP 422 bad bundle``."""
    key = f"CLINIC|{mrn or f'MRN{n}'}"
    raw = ER7.format(n=n).encode()
    if mrn:
        raw = raw.replace(f"MRN{n}^".encode(), f"{mrn}^".encode())
    [stored] = store.save_batch(
        [
            Incoming(
                raw=raw,
                channel="mllp",
                control_id=f"C{n}",
                message_type="ADT",
                trigger="A04",
                sending_application="FRONTDESK",
                sending_facility="CLINIC",
                patient_key=key,
                dedupe_key=f"FRONTDESK|CLINIC|C{n}",
            )
        ]
    )
    news = [
        NewDelivery(
            d,
            "adt",
            "fhir-bundle",
            "application/fhir+json",
            b'{"resourceType":"Bundle","type":"transaction","entry":[]}',
            key,
        )
        for d in destinations
    ]
    store.finish_batch([Processed(stored.id, "routed", None, key, news)])
    for due in store.claim_due_deliveries(100):
        good = due.destination in ok
        store.record_outcomes([Outcome(due.id, good, "" if good else "HTTP 422 bad bundle")])
    return stored.id


def text_of(html: str) -> str:
    """The page's text, tags removed and entities read."""
    return re.sub(r"\s+", " ", html_text.unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def cells(html: str, table: str) -> list[list[str]]:
    """The body rows of the table with class ``table``, as text."""
    start = html.index(f'<table class="{table}"')
    body = html[html.index("<tbody>", start) : html.index("</tbody>", start)]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    return [[text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows]
