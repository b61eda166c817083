"""The ``athenahealth`` destination against the stub athena, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.adapters.athena import AthenaDestination, AthenaDestinationConfig
from engine.adapters.destination import DeliveryResult, Payload
from engine.documents.model import (
    DOCUMENT_ENVELOPE_TYPE,
    DocumentContent,
    DocumentEnvelope,
    DocumentInfo,
)
from engine.errors import ConfigError
from engine.settings import Settings
from engine.sim.athena import DEMO_DEPARTMENT, DEMO_PRACTICE, StubAthenaServer, running_stub_athena

CLIENT = "engine-athena-test"
SECRET = "athena-test-secret"
SECRET_ENV = "ATHENA_TEST_SECRET"


@pytest.fixture(scope="module")
def server() -> Iterator[StubAthenaServer]:
    with running_stub_athena(client_id=CLIENT, client_secret=SECRET) as athena:
        yield athena


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def athena(server: StubAthenaServer) -> StubAthenaServer:
    server.state.reset()
    return server


def pdf(n: int) -> bytes:
    return b"%PDF-1.4\n% synthetic test document " + str(n).encode() + b"\n%%EOF\n"


def payload(
    n: int = 1,
    *,
    mrn: str = "DEMO1001",
    document_type: str = "consent",
    media_type: str = "application/pdf",
    body: bytes | None = None,
) -> Payload:
    data = pdf(n) if body is None else body
    digest = hashlib.sha256(data).hexdigest()
    doc = DocumentInfo(
        document_id=n,
        sha256=digest,
        size=len(data),
        media_type=media_type,
        patient_mrn=mrn,
        document_type=document_type,
        document_date="2030-01-07",
        sender="scanner",
        channel="folder",
    )
    return Payload(
        message_id=n,
        destination="athena",
        kind="document",
        body=DocumentEnvelope(doc, "none").to_bytes(),
        content_type=DOCUMENT_ENVELOPE_TYPE,
        idempotency_key=f"{n}:athena",
        control_id=f"DOC-{n}",
        content=DocumentContent(digest, len(data), lambda: iter([data])),
    )


def config(athena: StubAthenaServer, **extra: object) -> AthenaDestinationConfig:
    return AthenaDestinationConfig.model_validate(
        {
            "base_url": athena.url,
            "client_id": CLIENT,
            "client_secret_env": SECRET_ENV,
            "practice_id": DEMO_PRACTICE,
            "department_id": DEMO_DEPARTMENT,
            "requests_per_second": 100,
            **extra,
        }
    )


def destination(athena: StubAthenaServer, home: Path, **extra: object) -> AthenaDestination:
    return AthenaDestination(
        "athena",
        config(athena, **extra),
        environ={SECRET_ENV: SECRET},
        settings=Settings(home=home),
    )


def deliver_all(dest: AthenaDestination, *payloads: Payload) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        try:
            return [await dest.deliver(p) for p in payloads]
        finally:
            await dest.close()

    return asyncio.run(run())


def test_an_upload_lands_once_with_its_class_and_department(
    athena: StubAthenaServer, home: Path
) -> None:
    (result,) = deliver_all(destination(athena, home), payload(1))
    assert result.ok, result
    (doc,) = athena.state.documents
    assert doc.documentsubclass == "ADMIN_CONSENT"
    assert doc.departmentid == DEMO_DEPARTMENT
    assert doc.patientid == athena.state.patient_id("DEMO1001")
    assert athena.state.uploads_by_hash[hashlib.sha256(pdf(1)).hexdigest()] == 1
    assert result.detail == f"athena: document {doc.documentid} created"


def test_a_redelivery_finds_its_marker_and_uploads_nothing(
    athena: StubAthenaServer, home: Path
) -> None:
    first, again = deliver_all(destination(athena, home), payload(1), payload(1))
    assert first.ok and again.ok
    assert "already there" in again.detail
    assert athena.state.uploads_by_hash[hashlib.sha256(pdf(1)).hexdigest()] == 1


def test_the_type_table_can_be_overridden(athena: StubAthenaServer, home: Path) -> None:
    dest = destination(athena, home, document_classes={"consent": "ADMIN_HIPAA"})
    deliver_all(dest, payload(1), payload(2, document_type="insurance-card"))
    assert [d.documentsubclass for d in athena.state.documents] == [
        "ADMIN_HIPAA",
        "ADMIN_INSURANCECARD",
    ]


def test_the_site_type_table_gives_the_class(athena: StubAthenaServer, tmp_path: Path) -> None:
    """The mapping set's document type table (built-in, the site's layered over it): a type
    with only a class sends the class; the site's row replaces the built-in one."""
    home = tmp_path / "site-home"
    tables = home / "mappings" / "tables"
    tables.mkdir(parents=True)
    (tables / "document_types.yaml").write_text(
        "types:\n"
        "  consent:\n"
        "    display: Consent\n"
        "    txa2: CS\n"
        "    athena: {class: ADMIN, subclass: ADMIN_HIPAA}\n"
    )
    dest = AthenaDestination(
        "athena",
        config(athena),
        environ={SECRET_ENV: SECRET},
        settings=Settings(home=home, mappings_dir=home / "mappings"),
    )
    results = deliver_all(dest, payload(1), payload(2, document_type="lab-report"))
    assert all(r.ok for r in results), results
    assert [d.documentsubclass for d in athena.state.documents] == ["ADMIN_HIPAA", "LABRESULT"]


def test_the_practice_table_gives_practice_and_department(
    athena: StubAthenaServer, home: Path
) -> None:
    dest = AthenaDestination(
        "athena",
        AthenaDestinationConfig.model_validate(
            {
                "base_url": athena.url,
                "client_id": CLIENT,
                "client_secret_env": SECRET_ENV,
                "practices": {"OAK": {"practice_id": DEMO_PRACTICE, "department_id": "2"}},
            }
        ),
        environ={SECRET_ENV: SECRET},
        settings=Settings(home=home),
    )
    p = payload(1)
    env = DocumentEnvelope.from_bytes(p.body)
    doc = DocumentInfo.from_dict({**env.document.to_dict(), "practice": "OAK"})
    p = Payload(**{**p.__dict__, "body": DocumentEnvelope(doc, "none").to_bytes()})
    no_practice = payload(2)
    results = deliver_all(dest, p, no_practice)
    assert results[0].ok, results[0]
    assert athena.state.documents[0].departmentid == "2"
    assert not results[1].ok and not results[1].retryable
    assert "no practice and department" in results[1].detail


def test_an_unknown_patient_waits_for_a_match(athena: StubAthenaServer, home: Path) -> None:
    (result,) = deliver_all(destination(athena, home), payload(1, mrn="NOSUCH42"))
    assert not result.ok and result.needs_patient and not result.retryable
    assert "NOSUCH42" not in result.detail
    assert athena.state.documents == []


def test_an_mrn_that_is_another_patients_athena_id_is_not_that_patient(
    athena: StubAthenaServer, home: Path
) -> None:
    """athena's search term also matches athena's own patient id: a practice MRN that happens
    to equal another patient's id must not file the document in that patient's chart."""
    other = athena.state.patient_id("DEMO1002")
    assert other not in {p["mrn"] for p in athena.state.patients.values()}
    (result,) = deliver_all(destination(athena, home), payload(1, mrn=other))
    assert not result.ok and result.needs_patient, result
    assert athena.state.documents == []


def test_the_patient_whose_mrn_it_is_gets_it_not_the_one_with_that_id(
    athena: StubAthenaServer, home: Path
) -> None:
    other = athena.state.patient_id("DEMO1002")
    with athena.state.lock:
        athena.state.patients["7001"] = {**athena.state.patients[other], "patientid": "7001"}
        athena.state.patients["7001"]["mrn"] = other
    (result,) = deliver_all(destination(athena, home), payload(1, mrn=other))
    assert result.ok, result
    assert [d.patientid for d in athena.state.documents] == ["7001"]


def test_a_patient_search_answer_past_four_mib_is_retried_not_read(
    athena: StubAthenaServer, home: Path
) -> None:
    """An answer the adapter cannot use whole (a broken or hostile athena) is refused as it
    streams in: retryable, naming the limit; not taken as "no such patient"."""
    base = athena.state.patients[athena.state.patient_id("DEMO1001")]
    with athena.state.lock:
        for n in range(50_000):  # about 6.5 MB of search answer
            athena.state.patients[str(100_000 + n)] = {**base, "patientid": str(100_000 + n)}
    (result,) = deliver_all(destination(athena, home), payload(1))
    assert not result.ok and result.retryable and not result.needs_patient, result
    assert "larger than 4194304 bytes" in result.detail
    assert athena.state.documents == []


def test_a_429_is_retried_after_its_retry_after(athena: StubAthenaServer, home: Path) -> None:
    dest = destination(athena, home)
    athena.state.fail_next(429, retry_after=7)
    first, second = deliver_all(dest, payload(1), payload(1))
    assert not first.ok and first.retryable and first.retry_after_s == 7
    assert second.ok
    assert len(athena.state.documents) == 1


def test_5xx_is_retryable_and_a_bad_department_is_permanent(
    athena: StubAthenaServer, home: Path
) -> None:
    athena.state.fail_next(503)
    (unavailable,) = deliver_all(destination(athena, home), payload(1))
    assert not unavailable.ok and unavailable.retryable
    (refused,) = deliver_all(destination(athena, home, department_id="77"), payload(2))
    assert not refused.ok and not refused.retryable
    assert refused.detail == "athena: upload -> 400 (Invalid departmentid.)"


def test_a_missing_field_is_named(athena: StubAthenaServer, home: Path) -> None:
    (refused,) = deliver_all(destination(athena, home), payload(1, body=b""))
    assert refused.detail == "athena: upload -> 400 (missing attachmentcontents)"


def test_only_pdf_documents_are_sent(athena: StubAthenaServer, home: Path) -> None:
    (result,) = deliver_all(destination(athena, home), payload(1, media_type="image/tiff"))
    assert not result.ok and not result.retryable and "image/tiff" in result.detail
    assert athena.state.api_requests == 0


def test_an_unmapped_document_type_is_permanent(athena: StubAthenaServer, home: Path) -> None:
    (result,) = deliver_all(destination(athena, home), payload(1, document_type="recipe"))
    assert not result.ok and not result.retryable and "'recipe'" in result.detail


def test_many_deliveries_and_a_second_instance_share_one_token(
    athena: StubAthenaServer, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    results = deliver_all(destination(athena, home), *(payload(n) for n in range(1, 11)))
    results += deliver_all(destination(athena, home), payload(11))
    assert all(r.ok for r in results), results
    assert athena.state.token_requests == 1
    (cached,) = (home / "var" / "tokens").glob("athena-*.json")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    token = next(iter(athena.state.tokens))
    assert token not in caplog.text and SECRET not in caplog.text
    assert "athena token fetched" in caplog.text


def test_a_401_fetches_a_new_token_once(athena: StubAthenaServer, home: Path) -> None:
    dest = destination(athena, home)

    async def run() -> tuple[DeliveryResult, DeliveryResult]:
        try:
            first = await dest.deliver(payload(1))
            athena.state.expire_tokens()
            return first, await dest.deliver(payload(2))
        finally:
            await dest.close()

    first, second = asyncio.run(run())
    assert first.ok and second.ok, (first, second)
    assert athena.state.token_requests == 2


def test_a_token_endpoint_429_is_waited_out_by_every_instance(
    athena: StubAthenaServer, home: Path
) -> None:
    """Another client used up the minute: the first delivery is told to wait; a second
    destination in the meantime does not ask the token endpoint again."""
    athena.state.token_limit_per_minute = 0
    (first,) = deliver_all(destination(athena, home), payload(1))
    assert not first.ok and first.retryable
    assert first.retry_after_s is not None and 0 < first.retry_after_s <= 60
    (second,) = deliver_all(destination(athena, home), payload(2))
    assert not second.ok and second.retryable and second.retry_after_s is not None
    assert athena.state.token_requests == 1


def test_wrong_credentials_are_permanent_naming_the_client(
    athena: StubAthenaServer, home: Path
) -> None:
    dest = AthenaDestination(
        "athena", config(athena), environ={SECRET_ENV: "wrong"}, settings=Settings(home=home)
    )
    (result,) = deliver_all(dest, payload(1))
    assert not result.ok and not result.retryable
    assert result.detail == (
        f"athena: athena token endpoint -> 401 invalid_client (client_id '{CLIENT}')"
    )
    assert "wrong" not in result.detail


def test_requests_are_paced_per_practice(athena: StubAthenaServer, home: Path) -> None:
    athena.state.practice_rps = 10
    dest = destination(athena, home, requests_per_second=8)
    started = time.monotonic()
    results = deliver_all(dest, *(payload(n) for n in range(1, 7)))
    assert all(r.ok for r in results), results
    assert athena.state.paced == 0
    assert time.monotonic() - started >= 12 / 8  # 13 requests (one search), 1/8 s apart


def test_no_secret_refuses_to_start(athena: StubAthenaServer, home: Path) -> None:
    with pytest.raises(ConfigError, match=SECRET_ENV):
        AthenaDestination("athena", config(athena), environ={}, settings=Settings(home=home))


def test_the_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="environment variable name"):
        AthenaDestinationConfig.model_validate(
            {"base_url": "http://x", "client_id": "c", "client_secret_env": "the secret"}
        )
    with pytest.raises(ValueError, match="documentsubclass"):
        AthenaDestinationConfig.model_validate(
            {
                "base_url": "http://x",
                "client_id": "c",
                "client_secret_env": "S",
                "document_classes": {"consent": "consent form"},
            }
        )


def test_worker_processes_share_one_token(
    athena: StubAthenaServer, home: Path, tmp_path: Path
) -> None:
    """Four worker processes deliver 40 documents, all starting at once: one token request,
    never more tokens in a minute than the endpoint allows."""
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import pathlib, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.adapters.test_athena import destination, deliver_all, payload

        class Stub:
            url = {athena.url!r}

        worker = int(sys.argv[2])
        # each worker its share of the practice's pace (the stub allows 50/s)
        dest = destination(Stub(), pathlib.Path({str(home)!r}), requests_per_second=10)
        pathlib.Path(sys.argv[1]).touch()
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.005)
        results = deliver_all(dest, *(payload(worker * 100 + n) for n in range(10)))
        failed = [r.detail for r in results if not r.ok]
        if failed:
            print(failed, file=sys.stderr)
        sys.exit(1 if failed else 0)
        """
    )
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(r), str(i)])
        for i, r in enumerate(ready)
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert athena.state.token_requests == 1
    assert athena.state.token_limited == 0
    assert len(athena.state.documents) == 40
    assert len(athena.state.uploads_by_hash) == 40


def test_the_token_is_used_until_a_minute_before_it_expires(
    athena: StubAthenaServer, home: Path
) -> None:
    dest = destination(athena, home)
    now = time.time()

    async def run() -> list[DeliveryResult]:
        try:
            results = []
            for n, at in enumerate((now, now + 3539, now + 3541), 1):
                dest.api.token.clock = lambda at=at: at
                results.append(await dest.deliver(payload(n)))
                assert athena.state.token_requests == (1 if n < 3 else 2)
            return results
        finally:
            await dest.close()

    assert all(r.ok for r in asyncio.run(run()))


def test_a_patient_found_is_remembered_for_its_ttl(athena: StubAthenaServer, home: Path) -> None:
    clock = [0.0]
    dest = AthenaDestination(
        "athena",
        config(athena, patient_cache_ttl_s=60, check_existing=False),
        environ={SECRET_ENV: SECRET},
        settings=Settings(home=home),
        clock=lambda: clock[0],
    )

    async def run() -> list[int]:
        counts = []
        try:
            for n, at in enumerate((0.0, 59.0, 61.0), 1):
                clock[0] = at
                before = athena.state.api_requests
                assert (await dest.deliver(payload(n))).ok
                counts.append(athena.state.api_requests - before)
        finally:
            await dest.close()
        return counts

    assert asyncio.run(run()) == [2, 1, 2]  # search + upload; upload; search again + upload


def test_a_slow_athena_is_a_retryable_timeout(athena: StubAthenaServer, home: Path) -> None:
    dest = destination(athena, home, timeout_s=0.3)
    deliver_all(destination(athena, home), payload(1))  # the token, fetched before it slows
    athena.state.delay_s = 1.0
    (result,) = deliver_all(dest, payload(2))
    assert not result.ok and result.retryable
    assert result.detail == "athena: timeout (ReadTimeout)"
