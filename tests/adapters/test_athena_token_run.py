"""athena's token endpoint under a real run: four worker processes share one token per client.

A short version of ``python -m bench --suite athena-tokens`` (bench/athena_tokens.py): the stub
athenahealth as a process (``engine stub-athena --admin``, its token endpoint limited to 5 a
minute, tokens shortened to 40 s), a real ``engine serve`` plus three ``engine worker``
processes delivering uploaded documents to it and pulling its appointments. The stub's own log
of token requests must show one request per token use period, never more than the limit in
60 s, no 429, and every document delivered once. Before it, the stub's counting and the
analysis that judges the run are checked on their own, so that a broken count cannot pass the
run. Last, the revocation case the bench found wanting: requests waiting in the pacer with a
token athena revoked meanwhile make one token request, not one each.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path

import httpx

from bench.athena_tokens import TokenRun, analyse, run_tokens, use_period
from engine.adapters.athena_client import AthenaClient, AthenaConnection, PracticePacer
from engine.settings import Settings
from engine.sim.athena import StubAthenaServer, running_stub_athena
from engine.sim.epic_fhir import load_mrn

CLIENT, SECRET = "token-run-client", "token-run-secret"
FORM = {"grant_type": "client_credentials", "scope": "athena/service/Athenanet.MDP.*"}


def _basic() -> dict[str, str]:
    raw = base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_the_stub_logs_each_token_request_and_its_answer_and_revokes_over_http() -> None:
    with running_stub_athena(client_id=CLIENT, client_secret=SECRET, admin=True) as athena:
        athena.state.token_limit_per_minute = 2
        athena.state.seed_load_patients(3)
        statuses = [
            httpx.post(athena.token_url, data=FORM, headers=_basic(), timeout=10).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        stats = httpx.get(f"{athena.url}/admin/stats", timeout=10).json()
        assert stats["token_requests"] == 3 and stats["tokens_issued"] == 2
        assert stats["token_limited"] == 1
        assert [status for _, status in stats["token_log"]] == [200, 200, 429]
        times = [t for t, _ in stats["token_log"]]
        assert times == sorted(times)

        token = next(iter(athena.state.tokens))
        bearer = {"Authorization": f"Bearer {token}"}
        search = f"{athena.url}/v1/195900/patients/search"
        found = httpx.get(search, params={"searchterm": load_mrn(3)}, headers=bearer, timeout=10)
        assert found.status_code == 200 and found.json()["totalcount"] == 1
        assert httpx.post(f"{athena.url}/admin/expire", timeout=10).status_code == 200
        refused = httpx.get(search, params={"searchterm": "DEMO1001"}, headers=bearer, timeout=10)
        assert refused.status_code == 401
        assert httpx.get(f"{athena.url}/admin/stats", timeout=10).json()["api_unauthorized"] == 1


def test_the_admin_controls_are_off_unless_asked_for() -> None:
    with running_stub_athena(client_id=CLIENT, client_secret=SECRET) as athena:
        assert httpx.get(f"{athena.url}/admin/stats", timeout=10).status_code == 404
        assert httpx.post(f"{athena.url}/admin/expire", timeout=10).status_code == 404


def test_stub_athena_command_takes_the_limit_and_lifetime() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "stub-athena", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--token-limit", "--token-lifetime", "--admin", "--load-patients"):
        assert option in done.stdout


def _run(
    offsets: list[float], revoked: tuple[float, ...] = (), statuses: list[int] | None = None
) -> TokenRun:
    """A five-minute run of 120 s tokens whose stub logged token requests at ``offsets``."""
    start = 1_000_000.0
    statuses = statuses or [200] * len(offsets)
    return TokenRun(
        minutes=5,
        workers=4,
        lifetime_s=120,
        limit=5,
        started=start,
        load_ended=start + 300,
        ended=start + 300,
        revoked_at=[start + r for r in revoked],
        accepted=10,
        stats={
            "token_log": [[start + o, s] for o, s in zip(offsets, statuses, strict=True)],
            "token_limited": statuses.count(429),
            "documents_created_twice": 0,
            "uploads": 10,
            "api_requests": 30,
            "api_unauthorized": 0,
            "paced": 0,
        },
    )


def test_the_analysis_counts_one_request_per_use_period_as_needed() -> None:
    period = use_period(120)
    assert period == 60
    f = analyse(_run([1, 61, 121.5, 150], revoked=(149,)))
    assert f["token_requests_needed"] == 4 and f["token_requests_superfluous"] == 0
    assert f["token_requests_per_minute"][:3] == [1, 1, 2]
    assert all(f["goals_met"].values()), f["goals_met"]


def test_the_analysis_catches_a_burst_of_workers_and_a_limit_passed() -> None:
    # four workers each fetching their own token at the start, then again together
    f = analyse(_run([1, 1.1, 1.2, 1.3, 61.5, 61.6, 61.7, 61.8]))
    assert f["token_requests_superfluous"] == 6
    assert f["max_token_requests_in_60s"] == 4  # each burst; 60.2 s lie between them
    assert not f["goals_met"]["one_token_per_use_period"]
    assert f["goals_met"]["never_over_the_limit"]
    g = analyse(_run([1, 2, 3, 4, 5, 6], statuses=[200] * 5 + [429]))
    assert g["max_token_requests_in_60s"] == 6 and g["token_429s"] == 1
    assert not g["goals_met"]["never_over_the_limit"] and not g["goals_met"]["no_token_429"]


def test_four_workers_share_one_token_through_its_refreshes() -> None:
    # 48 s of uploads; 40 s tokens used 20 s: tokens at about 0, 20 and 40 s, one request each
    # (a revocation mid-run is the bench's, and the test below: a defect makes it flaky here)
    run = run_tokens(0.8, lifetime_s=40, revoke_at=None, rate=4.0, drain_s=90, progress=False)
    f = analyse(run)
    assert f["worker_nodes_registered"] >= 4
    assert f["token_requests_needed"] >= 3, f
    assert f["token_requests_superfluous"] == 0, f["token_request_offsets_s"]
    assert f["api_401s"] == 0  # every worker refreshed before athena expired the token
    assert f["max_token_requests_in_60s"] <= 5
    assert f["token_429s"] == 0
    assert f["documents_accepted"] > 50 and f["documents_refused"] == 0
    assert f["documents_delivered"] == f["documents_accepted"]
    assert f["documents_created_twice"] == 0


def test_requests_queued_with_a_revoked_token_make_one_token_request(tmp_path: Path) -> None:
    """Three requests of one process wait in the practice's pacer (2 a second) with the token
    they took; athena revokes it meanwhile. The first 401 gets a new token; the later two, sent
    with the old one, must use that new token, not ask for a third and a fourth."""
    home = tmp_path / "home"
    home.mkdir()
    config = AthenaConnection.model_validate(
        {
            "client_id": CLIENT,
            "client_secret_env": "UNUSED_SECRET_ENV",
            "practice_id": "195900",
            "department_id": "1",
            "requests_per_second": 2,
            "base_url": "http://127.0.0.1",  # replaced below
        }
    )

    async def run(athena: StubAthenaServer) -> list[int]:
        api = AthenaClient(
            config.model_copy(update={"base_url": athena.url}), SECRET, settings=Settings(home=home)
        )
        try:
            first = await api.request("GET", "195900", "/patients/search?searchterm=DEMO1001")
            assert first.status_code == 200
            athena.state.expire_tokens()
            answers = await asyncio.gather(
                *(
                    api.request("GET", "195900", f"/patients/search?searchterm=DEMO100{n}")
                    for n in (1, 2, 3)
                )
            )
            return [r.status_code for r in answers]
        finally:
            await api.close()

    PracticePacer._shared.clear()  # a fresh pacer: this test's rate, no slot booked by others
    with running_stub_athena(client_id=CLIENT, client_secret=SECRET) as athena:
        assert asyncio.run(run(athena)) == [200, 200, 200]
        # the first token, and one after the revocation
        assert athena.state.token_requests == 2


def test_the_worker_processes_share_a_practices_pace() -> None:
    """Two worker processes of one ``engine serve`` each pace a practice at half its
    ``requests_per_second``, so that together they keep it."""
    from engine.adapters.athena_client import set_process_share

    PracticePacer._shared.clear()
    try:
        set_process_share(2)
        assert PracticePacer.for_practice("https://athena.test", "195900", 5.0).rate == 2.5
        set_process_share(1)
        assert PracticePacer.for_practice("https://athena.test", "195900", 5.0).rate == 5.0
    finally:
        set_process_share(1)
        PracticePacer._shared.clear()
