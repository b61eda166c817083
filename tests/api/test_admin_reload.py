"""POST /api/admin/reload: admins only; 200 when the new files are applied, 422 with the reason
(file and line) when the running configuration is kept, 503 on an engine that cannot reload;
every attempt but an unauthenticated one is a record of the audit trail."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import AppFactory, TestClient, bearer
from tests.api.fakes import FakeMessages
from tests.flow.test_reload import BROKEN_ROUTE, make_reloader, reload_settings


def test_admin_reload_endpoint(
    tmp_path: Path, make_app: AppFactory, token: object, messages: FakeMessages
) -> None:
    settings = reload_settings(tmp_path)
    reloader, applied = make_reloader(settings)
    app = make_app()
    client = TestClient(app)
    mint = token  # the fixture: role -> token
    assert callable(mint)

    assert client.post("/api/admin/reload", headers=bearer(mint("admin"))).status_code == 503
    app.state.reloader = reloader
    assert client.post("/api/admin/reload").status_code == 401
    assert client.post("/api/admin/reload", headers=bearer(mint("viewer"))).status_code == 403

    ok = client.post("/api/admin/reload", headers=bearer(mint("admin")))
    assert ok.status_code == 200 and ok.json()["status"] == "reloaded"
    assert len(applied) == 1

    assert settings.routes_dir is not None
    (settings.routes_dir / "bad.yaml").write_text(BROKEN_ROUTE)
    kept = client.post("/api/admin/reload", headers=bearer(mint("admin")))
    assert kept.status_code == 422
    body = kept.json()
    assert body["status"] == "kept" and "bad.yaml" in body["error"]
    assert len(applied) == 1
    trail = [(e["action"], e["actor"], e["source"], e["outcome"]) for e in messages.audit]
    assert trail == [
        ("reload", "test-admin", "api", "refused"),  # the engine cannot reload
        ("reload", "test-viewer", "api", "refused"),  # not an admin
        ("reload", "test-admin", "api", "ok"),
        ("reload", "test-admin", "api", "refused"),  # bad.yaml
    ]
    assert "bad.yaml" in str(messages.audit[-1]["detail"])
    assert "requires the admin role" in str(messages.audit[1]["detail"])
