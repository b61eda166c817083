"""The console's routes page on the real app and store (SQLite and PostgreSQL) with the real
Reloader: the running routes, destinations and mappings with their files; the files on disk
checked without running them; reload (admin, CSRF) applies valid files, keeps the running ones
and says why for broken ones; each reload in the audit trail."""

from __future__ import annotations

from pathlib import Path

from engine.api.auth import Role
from engine.store import SqlMessageStore
from tests.api.conftest import TestClient
from tests.console.test_messages_page_support import TOKEN, cells, ops_app, text_of, user
from tests.flow.test_reload import BROKEN_ROUTE, EXTRA_ROUTE, make_reloader, reload_settings


def _client(store: SqlMessageStore, tmp_path: Path, *roles: Role) -> tuple[TestClient, object]:
    settings = reload_settings(tmp_path)
    reloader, _ = make_reloader(settings)
    app = ops_app(store, tmp_path, user(*roles))
    app.state.reloader = reloader
    return TestClient(app), reloader


def test_the_running_configuration_with_its_files(store: SqlMessageStore, tmp_path: Path) -> None:
    client, reloader = _client(store, tmp_path, Role.INTEGRATION)
    page = client.get("/console/routes")
    assert page.status_code == 200, page.text
    routes = cells(page.text, "routes")
    assert routes, "the built-in routes are listed"
    assert all(row[4].startswith("(built-in)") for row in routes)
    names = {row[0].split(" ")[0] for row in routes}
    assert names == {r.name for r in reloader.current.routes.routes}  # type: ignore[attr-defined]
    destinations = {row[0]: row for row in cells(page.text, "destinations")}
    assert set(destinations) == set(reloader.current.routes.destinations)  # type: ignore[attr-defined]
    text = text_of(page.text)
    assert "segments (" in text and "segments/PID" in text
    assert "Reload routes and mappings" not in text  # integration sees, does not reload


def test_check_then_reload_a_valid_change_and_keep_a_broken_one(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    client, reloader = _client(store, tmp_path, Role.ADMIN)
    site = reloader.settings.routes_dir  # type: ignore[attr-defined]
    (site / "lab.yaml").write_text(EXTRA_ROUTE.format(folder=tmp_path / "lab"))
    checked = text_of(client.get("/console/routes?check=1").text)
    assert "The files on disk now are valid" in checked
    assert "oru-to-lab" not in {r.name for r in reloader.current.routes.routes}  # type: ignore[attr-defined]

    assert client.post("/console/routes/reload").status_code == 403  # no CSRF token
    done = client.post("/console/routes/reload", data={"csrf_token": TOKEN})
    assert done.status_code == 200 and "Reloaded:" in text_of(done.text)
    assert "oru-to-lab" in {r.name for r in reloader.current.routes.routes}  # type: ignore[attr-defined]
    assert any(row[4].endswith("lab.yaml") for row in cells(done.text, "routes"))

    (site / "bad.yaml").write_text(BROKEN_ROUTE)
    broken = text_of(client.get("/console/routes?check=1").text)
    assert "are not valid" in broken and "bad.yaml" in broken
    kept = client.post("/console/routes/reload", data={"csrf_token": TOKEN})
    assert kept.status_code == 422
    shown = text_of(kept.text)
    assert "Kept the running configuration." in shown and "bad.yaml" in shown
    assert not any(row[0].startswith("bad") for row in cells(kept.text, "routes"))
    trail = [(e.action, e.actor, e.source, e.outcome) for e in store.audit_entries(limit=5)]
    assert trail == [
        ("reload", "olga", "console", "refused"),
        ("reload", "olga", "console", "ok"),
    ]
    [refused, applied] = store.audit_entries(limit=2)
    assert "bad.yaml" in (refused.detail or "") and "applied:" in (applied.detail or "")


def test_a_viewer_may_not_reload(store: SqlMessageStore, tmp_path: Path) -> None:
    client, _ = _client(store, tmp_path, Role.VIEWER)
    assert client.get("/console/routes").status_code == 200
    assert client.post("/console/routes/reload", data={"csrf_token": TOKEN}).status_code == 403
    [entry] = store.audit_entries(limit=1)
    assert (entry.action, entry.outcome) == ("reload", "refused")


def test_an_engine_without_a_reloader_says_so(store: SqlMessageStore, tmp_path: Path) -> None:
    client = TestClient(ops_app(store, tmp_path, user(Role.ADMIN)))
    assert "runs without a loaded configuration" in text_of(client.get("/console/routes").text)
    answer = client.post("/console/routes/reload", data={"csrf_token": TOKEN})
    assert answer.status_code == 503
