"""schemathesis over the engine's OpenAPI document, against the real app (ASGI).

The app is built as ``engine serve`` builds it — the real store (SQLite in a temp dir, migrated),
the real ingest gate over the example routes, the documents intake and the eligibility service —
with the dev token secret. schemathesis generates requests for every operation the document
lists, valid ones and invalid ones, and the tests check:

* with an admin token: never a 5xx, every status and content type declared, every body as its
  schema says;
* each operation that declares ``security``: no token, a malformed one, another scheme's and one
  signed with a secret the engine does not hold answer 401 with a Bearer challenge; a valid token
  without the operation's role answers 403; an open operation (``security: []``) answers
  without a token.

schemathesis's own pytest plugin (``from_fixture``) does not run on pytest 9 (it sets a node id
attribute pytest no longer has), so each operation's cases come from its hypothesis strategy
(``operation.as_strategy``) here. Examples are few per operation (``MAX_EXAMPLES``) so this stays
under a minute in ``make test``; the database is shared by the module, so generated ids sometimes
meet a message or document an earlier case stored.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from jose import jwt
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.api.app import create_app
from engine.api.auth_settings import AuthSettings
from engine.api.docs import SCHEME
from engine.api.tokens import mint_dev_token
from engine.documents.intake import DocumentIntake
from engine.flow.config import LoadedConfig, Reloader, load_running_config
from engine.flow.ingest import Ingest
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import SqlMessageStore, create_db_engine

MAX_EXAMPLES = 40
ROLES = ("admin", "integration", "viewer", "front-desk")
ADMIN_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class _Health:
    """Ready when the store answers (as engine serve's)."""

    def __init__(self, store: SqlMessageStore) -> None:
        self.store = store

    def ready(self) -> bool:
        return self.store.ping()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-home")


@pytest.fixture(scope="module")
def auth(home: Path) -> AuthSettings:
    return AuthSettings(environment="development", dev_secret_file=home / "dev-jwt-secret")


@pytest.fixture(scope="module")
def real_app(home: Path, auth: AuthSettings) -> Iterator[FastAPI]:
    """The API as engine serve wires it, on SQLite."""
    from engine.adapters.payer import load_payers
    from engine.jobs.eligibility import EligibilityService

    settings = Settings(var_dir=home)
    db = create_db_engine(settings.resolved_database_url())
    store = SqlMessageStore(db)
    store.migrate()
    config, _running = load_running_config(settings)
    ingest = Ingest(
        store,
        routes=config.gate,
        default_charset=settings.default_charset,
        identity=(settings.application_name, settings.facility_name),
    )
    app = create_app(
        settings,
        auth=auth,
        ingest=ingest,
        messages=store,
        health=_Health(store),
        metrics=EngineMetrics(),
        eligibility=EligibilityService(store, load_payers(settings.payers_dir), settings),
        documents=DocumentIntake.from_settings(store, settings),
    )

    def apply(new: LoadedConfig, _running: Settings) -> None:
        ingest.routes = new.gate

    app.state.reloader = Reloader(settings, config, apply)  # as engine serve sets it
    try:
        yield app
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def tokens(auth: AuthSettings) -> dict[str, str]:
    """A valid dev token per role."""
    return {role: mint_dev_token(auth, role=role, subject=f"st-{role}") for role in ROLES}


@pytest.fixture(scope="module")
def api_schema(real_app: FastAPI) -> Any:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", real_app)
    loaded.config.generation.update(max_examples=MAX_EXAMPLES, with_security_parameters=False)
    return loaded


def _operations(api_schema: Any) -> list[Any]:
    """Every operation of the document (one schemathesis cannot read fails the test)."""
    return [result.ok() for result in api_schema.get_all_operations()]


def _run(operation: Any, mode: GenerationMode, examples: int, check: Callable[[Any], None]) -> None:
    """``check(case)`` on ``examples`` cases generated for ``operation``."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failure says enough
    )
    def each(case: Any) -> None:
        check(case)

    each()


def _all_operations(
    api_schema: Any, mode: GenerationMode, examples: int, check: Callable[[Any], None]
) -> None:
    """``check`` over every operation; each operation's failure is reported, not just the first."""
    failures: list[str] = []
    for operation in _operations(api_schema):
        try:
            _run(operation, mode, examples, check)
        except Unsatisfiable:
            # no parameter nor body to make invalid (GET /healthz): nothing negative to send
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collected, and reported together below
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)


def test_the_document_lists_every_operation_with_its_security(api_schema: Any) -> None:
    labels = {operation.label for operation in _operations(api_schema)}
    assert {"GET /api/messages", "POST /hl7v2", "POST /api/admin/reload", "GET /healthz"} <= labels
    for operation in _operations(api_schema):
        assert "security" in operation.definition.raw, operation.label


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_with_an_admin_token_no_server_error_and_responses_match_the_schema(
    api_schema: Any, tokens: dict[str, str], mode: GenerationMode
) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}

    def check(case: Any) -> None:
        case.call_and_validate(headers=admin, checks=ADMIN_CHECKS)

    _all_operations(api_schema, mode, MAX_EXAMPLES, check)


def _required_roles(operation: Any) -> tuple[bool, set[str]]:
    """Whether the operation declares a bearer requirement, and the roles any of which will do."""
    security = operation.definition.raw["security"]
    roles = {role for requirement in security for role in requirement.get(SCHEME, [])}
    return bool(security), roles


def _wrong_role(allowed: set[str]) -> str | None:
    """A role that is neither one the operation takes nor admin."""
    return next((r for r in ("front-desk", "viewer", "integration") if r not in allowed), None)


def _foreign() -> str:
    """A well-formed HS256 token with the engine's claims, signed with a secret it does not hold."""
    now = int(time.time())
    claims = {"sub": "intruder", "aud": "engine", "exp": now + 600, "roles": ["admin"]}
    return "Bearer " + str(jwt.encode(claims, secrets.token_hex(32), algorithm="HS256"))


def test_every_secured_operation_refuses_a_missing_or_wrong_token_or_role(
    api_schema: Any, tokens: dict[str, str]
) -> None:
    def check(case: Any) -> None:
        secured, allowed = _required_roles(case.operation)
        label = case.operation.label
        if not secured:
            response = case.call()
            assert response.status_code not in (401, 403), (label, response.text)
            return
        for header in (None, "Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz", _foreign()):
            response = case.call(headers={"Authorization": header} if header else {})
            assert response.status_code == 401, (label, header, response.text)
            challenge = " ".join(response.headers.get("www-authenticate", []))
            assert challenge.startswith("Bearer"), (label, header)
        wrong = _wrong_role(allowed)
        if allowed and wrong is not None:
            response = case.call(headers={"Authorization": f"Bearer {tokens[wrong]}"})
            assert response.status_code == 403, (label, wrong, response.text)
            assert json.loads(response.text)["detail"], label

    _all_operations(api_schema, GenerationMode.POSITIVE, 3, check)
