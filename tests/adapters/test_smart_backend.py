"""FHIR deliveries with ``smart-backend`` auth to the stub Epic, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.fhir_rest import FhirDestination, FhirRestDestination, SmartBackendServices
from engine.adapters.registry import build_destination
from engine.adapters.smart import _lock
from engine.keys import Keyring, keyring_for
from engine.routes.spec import DestinationSpec
from engine.settings import Settings
from engine.sim.epic import StubEpicServer
from tests.adapters.conftest import bundle_payload
from tests.sim.epic_support import epic_with_client

BUNDLES = Path(__file__).resolve().parents[2] / "fixtures" / "fhir"
ADT_A01 = (BUNDLES / "adt_a01.json").read_bytes()
CLIENT = "engine-smart-test"
SCOPE = "system/*.write"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    Keyring(home / "var" / "keys").create("ES384")
    return home


@pytest.fixture(scope="module")
def epic_server(home: Path) -> Iterator[StubEpicServer]:
    with epic_with_client(Keyring(home / "var" / "keys"), CLIENT) as epic:
        yield epic


@pytest.fixture
def epic(epic_server: StubEpicServer, home: Path) -> StubEpicServer:
    """The stub with no token issued and no token cached in the engine home."""
    epic_server.state.fhir.reset()
    epic_server.state.revoke_tokens()
    epic_server.state.token_failures.clear()
    epic_server.state.token_delay_s = 0.0
    for cached in (home / "var" / "tokens").glob("smart-*.json"):
        cached.unlink()
    return epic_server


def settings(home: Path) -> Settings:
    return Settings(home=home)


def payload(n: int = 1) -> Payload:
    return bundle_payload(ADT_A01, n, "epic", "ADT")


def destination(epic: StubEpicServer, home: Path, **auth: str) -> FhirRestDestination:
    config = FhirDestination.model_validate(
        {
            "base_url": epic.base_url,
            "auth": {"type": "smart-backend", "client_id": CLIENT, "scope": SCOPE, **auth},
        }
    )
    return FhirRestDestination("epic", config, settings=settings(home))


def deliver_all(dest: FhirRestDestination, *payloads: Payload) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        try:
            return [await dest.deliver(p) for p in payloads]
        finally:
            await dest.close()

    return asyncio.run(run())


def test_a_route_file_destination_fetches_one_token_for_many_deliveries(
    epic: StubEpicServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(home))
    spec = DestinationSpec.model_validate(
        {
            "type": "fhir",
            "base_url": epic.base_url,
            "auth": {"type": "smart-backend", "client_id": CLIENT, "scope": SCOPE},
        }
    )
    dest = build_destination("epic", spec)
    assert isinstance(dest, FhirRestDestination)
    before = epic.state.token_requests
    results = deliver_all(dest, *(payload(n) for n in range(1, 11)))
    assert all(r.ok for r in results), results
    assert epic.state.token_requests - before == 1
    assert epic.state.fhir.count("Patient") == 1
    assert sum(1 for e in epic.state.fhir.log if e["interaction"] == "transaction") == 10


def test_a_second_instance_reuses_the_cached_token(
    epic: StubEpicServer, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = epic.state.token_requests
    first = destination(epic, home)
    assert deliver_all(first, payload(1))[0].ok
    second = destination(epic, home)
    assert deliver_all(second, payload(2), payload(3))[-1].ok
    assert epic.state.token_requests - before == 1
    assert isinstance(second.auth, SmartBackendServices)
    assert second.auth.smart.fetches == 0
    folder = home / "var" / "tokens"
    (cached,) = folder.glob("smart-*.json")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    token = next(iter(epic.state.tokens))
    assert token not in caplog.text
    assert "smart-backend token fetched" in caplog.text


def test_worker_processes_at_once_share_one_token(
    epic: StubEpicServer, home: Path, tmp_path: Path
) -> None:
    """Four processes ask at the same moment (they wait for a go file): one token request."""
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import pathlib, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.adapters.test_smart_backend import destination, deliver_all, payload

        class Stub:
            base_url = {epic.base_url!r}

        dest = destination(Stub(), pathlib.Path({str(home)!r}))
        pathlib.Path(sys.argv[1]).touch()
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.005)
        results = deliver_all(dest, *(payload(n) for n in range(1, 4)))
        sys.exit(0 if all(r.ok for r in results) else 1)
        """
    )
    before = epic.state.token_requests
    epic.state.token_delay_s = 0.3  # a slow token endpoint: a wide window for a second fetch
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)]) for r in ready]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert epic.state.token_requests - before == 1


def test_a_401_fetches_a_new_token_once_and_retries(epic: StubEpicServer, home: Path) -> None:
    dest = destination(epic, home)
    before = epic.state.token_requests

    async def run() -> tuple[DeliveryResult, DeliveryResult]:
        try:
            first = await dest.deliver(payload(1))
            epic.state.revoke_tokens()
            return first, await dest.deliver(payload(2))
        finally:
            await dest.close()

    first, second = asyncio.run(run())
    assert first.ok and second.ok, (first, second)
    assert epic.state.token_requests - before == 2


def test_a_refusing_token_endpoint_fails_the_delivery_naming_the_oauth_error(
    epic: StubEpicServer, home: Path
) -> None:
    epic.state.fail_token_next(400, "invalid_client")
    (result,) = deliver_all(destination(epic, home), payload(1))
    assert not result.ok and not result.retryable
    assert result.detail == (
        f"fhir: smart-backend token endpoint -> 400 invalid_client (client_id '{CLIENT}')"
    )
    assert epic.state.fhir.count("Patient") == 0


def test_an_unavailable_token_endpoint_is_retryable(epic: StubEpicServer, home: Path) -> None:
    epic.state.fail_token_next(503, "temporarily_unavailable")
    (result,) = deliver_all(destination(epic, home), payload(1))
    assert not result.ok and result.retryable
    assert "503 temporarily_unavailable" in result.detail


def test_no_signing_key_is_a_permanent_failure_naming_the_command(
    epic: StubEpicServer, tmp_path: Path
) -> None:
    (result,) = deliver_all(destination(epic, tmp_path), payload(1))
    assert not result.ok and not result.retryable
    assert "engine keys create" in result.detail
    assert keyring_for(settings(tmp_path)).records() == []


def test_a_given_token_url_skips_discovery(epic: StubEpicServer, home: Path) -> None:
    before = epic.state.token_requests
    dest = destination(epic, home, token_url=epic.url + "/nowhere")
    (result,) = deliver_all(dest, payload(1))
    assert not result.ok and not result.retryable
    assert "token endpoint -> 401" in result.detail  # the stub's FHIR gate, not its token URL
    assert epic.state.token_requests == before


def test_the_auth_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="client_id"):
        FhirDestination.model_validate(
            {"base_url": "http://x", "auth": {"type": "smart-backend", "scope": SCOPE}}
        )


def test_the_token_is_used_until_a_minute_before_it_expires(
    epic: StubEpicServer, home: Path
) -> None:
    dest = destination(epic, home)
    assert isinstance(dest.auth, SmartBackendServices)
    before = epic.state.token_requests
    now = time.time()

    async def run() -> list[DeliveryResult]:
        try:
            results = []
            for n, at in enumerate((now, now + 239, now + 241), 1):
                dest.auth.smart.clock = lambda at=at: at  # type: ignore[union-attr]
                results.append(await dest.deliver(payload(n)))
                assert epic.state.token_requests - before == (1 if n < 3 else 2)
            return results
        finally:
            await dest.close()

    assert all(r.ok for r in asyncio.run(run()))


def test_a_delivery_cancelled_while_waiting_for_the_token_lock_does_not_keep_it(
    epic: StubEpicServer, home: Path
) -> None:
    dest = destination(epic, home)
    assert isinstance(dest.auth, SmartBackendServices)
    lock = dest.auth.smart.cache_file(settings(home), epic.token_url).with_suffix(".lock")
    held = _lock(lock)  # another process holds the lock

    def free() -> bool:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    async def run() -> bool:
        try:
            task = asyncio.create_task(dest.deliver(payload(1)))
            await asyncio.sleep(0.3)  # let it reach the lock (the test passes vacuously if not)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            os.close(held)  # the other process lets go: the cancelled wait takes the lock
            deadline = time.monotonic() + 5
            while not free():
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.01)
            return True
        finally:
            await dest.close()

    assert asyncio.run(run()), "the cancelled delivery kept the token lock"
