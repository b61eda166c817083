"""Bearer tokens in dev mode: what is refused (401), what is forbidden (403), and what passes."""

from __future__ import annotations

import base64
import json
import logging
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from engine.api.auth import MAX_TOKEN_BYTES
from engine.api.auth_settings import AuthSettings
from engine.api.tokens import mint_dev_token
from engine.errors import ConfigError
from tests.api.conftest import AppFactory, bearer

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
MSG = b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|CTRL-1|P|2.5.1\r"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _list(client: TestClient, token: str) -> Any:
    return client.get("/api/messages", headers=bearer(token))


def test_no_token_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    response = client.get("/api/messages")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="engine"'


def test_another_scheme_is_401(client: TestClient) -> None:
    response = client.get("/api/messages", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("token", ["garbage", "a.b", "a.b.c.d", "x.y.z", "a+b.c/d.e="])
def test_malformed_tokens_are_401(client: TestClient, token: str) -> None:
    response = _list(client, token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_valid_viewer_token_lists(client: TestClient, token: Callable[[str], str]) -> None:
    assert _list(client, token("viewer")).status_code == 200


def test_expired_token_is_401(client: TestClient, dev_token: Callable[..., str]) -> None:
    expired = dev_token(exp=int(time.time()) - 120, roles=["admin"])
    response = _list(client, expired)
    assert response.status_code == 401 and response.json()["detail"] == "token expired"


def test_expiry_within_the_leeway_still_passes(
    client: TestClient, dev_token: Callable[..., str]
) -> None:
    assert _list(client, dev_token(exp=int(time.time()) - 5, roles=["viewer"])).status_code == 200


def test_token_without_exp_is_401(client: TestClient, dev_token: Callable[..., str]) -> None:
    assert _list(client, dev_token(exp=None, roles=["admin"])).status_code == 401


def test_not_yet_valid_token_is_401(client: TestClient, dev_token: Callable[..., str]) -> None:
    assert _list(client, dev_token(nbf=int(time.time()) + 600, roles=["admin"])).status_code == 401


@pytest.mark.parametrize("aud", ["other-service", ["other", "services"], None])
def test_wrong_or_missing_audience_is_401(
    client: TestClient, dev_token: Callable[..., str], aud: Any
) -> None:
    assert _list(client, dev_token(aud=aud, roles=["admin"])).status_code == 401


def test_audience_list_containing_ours_passes(
    client: TestClient, dev_token: Callable[..., str]
) -> None:
    token = dev_token(aud=["portal", "engine"], roles=["viewer"])
    assert _list(client, token).status_code == 200


def test_issuer_is_checked_when_configured(
    make_app: AppFactory, auth: AuthSettings, dev_token: Callable[..., str]
) -> None:
    client = TestClient(make_app(auth_settings=auth.model_copy(update={"issuer": "https://idp"})))
    assert _list(client, dev_token(roles=["viewer"])).status_code == 401
    assert _list(client, dev_token(iss="https://other", roles=["viewer"])).status_code == 401
    assert _list(client, dev_token(iss="https://idp", roles=["viewer"])).status_code == 200


def test_wrong_secret_is_401(client: TestClient) -> None:
    from jose import jwt

    now = int(time.time())
    claims = {"aud": "engine", "exp": now + 60, "roles": ["admin"]}
    forged = jwt.encode(claims, "x" * 64, algorithm="HS256")
    assert _list(client, forged).status_code == 401


def test_alg_none_token_is_401(client: TestClient) -> None:
    now = int(time.time())
    claims = {"aud": "engine", "exp": now + 60, "roles": ["admin"]}
    for alg in ("none", "None", "NONE"):
        unsigned = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims)}."
        response = _list(client, unsigned)
        assert response.status_code == 401
        assert response.json()["detail"] == "token algorithm not accepted"


def test_other_hmac_algorithm_is_401(auth: AuthSettings, client: TestClient) -> None:
    from jose import jwt

    from engine.api.keys import dev_secret

    now = int(time.time())
    claims = {"aud": "engine", "exp": now + 60, "roles": ["admin"]}
    token = jwt.encode(claims, dev_secret(auth), algorithm="HS512")
    assert _list(client, token).status_code == 401


def test_oversize_token_is_401_before_decoding(
    client: TestClient, dev_token: Callable[..., str]
) -> None:
    big = dev_token(roles=["admin"], padding="x" * MAX_TOKEN_BYTES)
    response = _list(client, big)
    assert response.status_code == 401 and response.json()["detail"] == "token too large"


def test_viewer_may_not_post(client: TestClient, token: Callable[[str], str]) -> None:
    response = client.post("/hl7v2", content=MSG, headers={**ER7, **bearer(token("viewer"))})
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_integration_may_post_but_not_list_or_replay(
    client: TestClient, token: Callable[[str], str]
) -> None:
    integration = bearer(token("integration"))
    assert client.post("/hl7v2", content=MSG, headers={**ER7, **integration}).status_code == 200
    assert client.get("/api/messages", headers=integration).status_code == 403
    assert client.post("/api/messages/1/replay", headers=integration).status_code == 403


def test_admin_may_do_everything(client: TestClient, token: Callable[[str], str]) -> None:
    admin = bearer(token("admin"))
    assert client.post("/hl7v2", content=MSG, headers={**ER7, **admin}).status_code == 200
    assert client.get("/api/messages", headers=admin).status_code == 200
    assert client.post("/api/messages/1/replay", headers=admin).status_code == 202


def test_token_without_known_roles_is_403(
    client: TestClient, dev_token: Callable[..., str]
) -> None:
    assert _list(client, dev_token(roles=["superuser", 7])).status_code == 403
    assert _list(client, dev_token()).status_code == 403


def test_roles_from_the_scope_string(client: TestClient, dev_token: Callable[..., str]) -> None:
    assert _list(client, dev_token(scope="openid viewer")).status_code == 200


def test_nested_roles_claim_and_aliases(
    make_app: AppFactory, auth: AuthSettings, dev_token: Callable[..., str]
) -> None:
    custom = auth.model_copy(
        update={"roles_claim": "realm_access.roles", "role_aliases": {"engine-readers": "viewer"}}
    )
    client = TestClient(make_app(auth_settings=custom))
    token = dev_token(realm_access={"roles": ["engine-readers"]})
    assert _list(client, token).status_code == 200
    assert _list(client, mint_dev_token(custom, role="viewer")).status_code == 200


def test_the_token_is_never_logged(
    client: TestClient, dev_token: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    expired = dev_token(exp=int(time.time()) - 600, roles=["admin"])
    assert _list(client, expired).status_code == 401
    signature = expired.rsplit(".", 1)[1]
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "token refused" in logged and signature not in logged


def test_dev_secret_is_created_private_on_first_use(auth: AuthSettings) -> None:
    assert not auth.dev_secret_file.exists()
    mint_dev_token(auth, role="viewer")
    mode = stat.S_IMODE(auth.dev_secret_file.stat().st_mode)
    assert mode == 0o600 and len(auth.dev_secret_file.read_bytes().strip()) >= 32


def test_mint_refuses_unknown_roles_and_production(auth: AuthSettings) -> None:
    with pytest.raises(ConfigError, match="unknown role"):
        mint_dev_token(auth, role="root")
    with pytest.raises(ConfigError, match="development only"):
        mint_dev_token(auth.model_copy(update={"environment": "production"}), role="admin")


def test_production_refuses_a_missing_dev_secret(make_app: AppFactory, tmp_path: Path) -> None:
    prod = AuthSettings(environment="production", dev_secret_file=tmp_path / "none")
    with pytest.raises(ConfigError, match="no token secret"):
        make_app(auth_settings=prod)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("secret", [b"changeme", b"secret\n", b"a" * 64, b"short-but-random"])
def test_production_refuses_a_placeholder_secret(
    make_app: AppFactory, tmp_path: Path, secret: bytes
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(secret)
    with pytest.raises(ConfigError, match="placeholder"):
        make_app(auth_settings=AuthSettings(environment="production", dev_secret_file=path))


def test_production_accepts_a_strong_shared_secret(make_app: AppFactory, tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("3f9c0a8e51b27d46c1e09a7b58f2d3c4e6a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7\n")
    make_app(auth_settings=AuthSettings(environment="production", dev_secret_file=path))


def test_settings_refuse_symmetric_and_none_algorithms() -> None:
    for algorithms in (["HS256"], ["none"], []):
        with pytest.raises(ValidationError, match="algorithms"):
            AuthSettings(algorithms=algorithms)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENGINE_ENV", "production")
    monkeypatch.setenv("ENGINE_AUTH_MODE", "jwks")
    monkeypatch.setenv("ENGINE_AUTH_JWKS_URL", "https://idp.example.test/jwks")
    monkeypatch.setenv("ENGINE_AUTH_ALGORITHMS", "RS256, ES384")
    monkeypatch.setenv("ENGINE_AUTH_ROLE_ALIASES", '{"ehr-feed": "integration"}')
    auth = AuthSettings()
    assert not auth.is_development and auth.algorithms == ["RS256", "ES384"]
    assert auth.role_aliases == {"ehr-feed": "integration"}


def test_settings_need_what_their_mode_needs() -> None:
    with pytest.raises(ValidationError, match="KEY_FILE"):
        AuthSettings(mode="keyfile")
    with pytest.raises(ValidationError, match="JWKS_URL"):
        AuthSettings(mode="jwks")
    with pytest.raises(ValidationError, match="https"):
        AuthSettings(mode="jwks", jwks_url="http://idp/jwks", environment="production")
    with pytest.raises(ValidationError, match="role_aliases"):
        AuthSettings(role_aliases={"x": "root"})


def test_default_dev_secret_lives_under_var_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from engine.api.auth_settings import auth_settings_for
    from engine.settings import Settings

    monkeypatch.delenv("ENGINE_AUTH_DEV_SECRET_FILE", raising=False)
    assert auth_settings_for(Settings(var_dir=tmp_path)).dev_secret_file == (
        tmp_path / "dev-jwt-secret"
    )
    monkeypatch.setenv("ENGINE_AUTH_DEV_SECRET_FILE", str(tmp_path / "elsewhere"))
    assert auth_settings_for(Settings(var_dir=tmp_path)).dev_secret_file == tmp_path / "elsewhere"
