"""A 401 refuses the token the request carried, not the one held now: deliveries in flight with
a token the server revoked make one token request between them, not one each (found by the
athena-tokens bench with eight workers; the FHIR and SMART clients had the same pattern)."""

from __future__ import annotations

import asyncio

import httpx

from engine.adapters.auth import OAuth2Auth
from engine.adapters.fhir_rest import OAuth2ClientCredentials


def _server() -> tuple[httpx.MockTransport, dict[str, int]]:
    """A token endpoint (t1, t2, ...) and a resource that takes only the newest token; the first
    token is revoked once both requests carry it."""
    state = {"issued": 0, "valid": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            state["issued"] += 1
            state["valid"] = state["issued"]
            return httpx.Response(
                200, json={"access_token": f"t{state['issued']}", "expires_in": 3600}
            )
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        return httpx.Response(200 if token == f"t{state['valid']}" else 401)

    return httpx.MockTransport(handler), state


def test_two_requests_refused_with_a_revoked_token_make_one_token_request() -> None:
    transport, state = _server()
    auth = OAuth2ClientCredentials(
        OAuth2Auth(
            type="oauth2", token_url="http://idp/token", client_id="c", client_secret_env="X_SECRET"
        ),
        "secret",
    )

    async def run() -> list[int]:
        async with httpx.AsyncClient(transport=transport) as client:
            # both take t1; then the server revokes it (valid: none until the next issue)
            first = await auth.authorization(client)
            second = await auth.authorization(client)
            assert first == second == "Bearer t1"
            state["valid"] = 0
            statuses = []
            for carried in (first, second):  # each answered 401, one after the other
                resp = await client.get("http://ehr/Patient", headers={"Authorization": carried})
                assert resp.status_code == 401
                assert auth.invalidate(carried.removeprefix("Bearer "))
                again = await auth.authorization(client)
                resp = await client.get("http://ehr/Patient", headers={"Authorization": again})
                statuses.append(resp.status_code)
            return statuses

    assert asyncio.run(run()) == [200, 200]
    assert state["issued"] == 2  # t1, then one t2 for both: not a t3 for the second 401


def test_invalidate_without_a_token_forgets_the_one_held() -> None:
    transport, state = _server()
    auth = OAuth2ClientCredentials(
        OAuth2Auth(
            type="oauth2", token_url="http://idp/token", client_id="c", client_secret_env="X_SECRET"
        ),
        "secret",
    )

    async def run() -> str | None:
        async with httpx.AsyncClient(transport=transport) as client:
            await auth.authorization(client)
            auth.invalidate()
            return await auth.authorization(client)

    assert asyncio.run(run()) == "Bearer t2"
