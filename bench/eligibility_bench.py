"""1,000 appointments checked against the stub payer with 50 ms latency per request.

The appointments, patients, coverages and payers are put in the engine's resource index as the
processing stage would (synthetic roster members, so every answer is a real 271 with benefits);
the eligibility service then builds each 270, sends it to the in-process stub payer (50 ms, bounded
concurrency per payer), reads each 271, converts it to FHIR and stores the verdict (one durable
commit per check). Goal: <= 10 s for the 1,000.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.harness import Options, environment
from engine.adapters.payer import PayerSet
from engine.adapters.payer.config import PayerConfig
from engine.jobs.eligibility import EligibilityService
from engine.settings import Settings
from engine.store import Incoming, IndexedResource, Processed, SqlMessageStore, create_db_engine

__all__ = ["run"]

MEMBERS = [  # roster members that answer active with benefits, inactive, or AAA
    ("DEMO100001", "RIVERA", "ANA", "1985-03-12", "female"),
    ("DEMO100002", "OKAFOR", "CHIDI", "1970-01-01", "male"),
    ("XQZ123456789", "TESTPATIENT", "ALICE", "1984-02-29", "female"),
    ("SYNERR075", "NOBODY", "KNOWN", "1990-01-01", "female"),
]
PAYERS = ["PAYERA", "PAYERB", "PAYERC", "PAYERD"]


def _index(store: SqlMessageStore, n: int, day: datetime) -> None:
    rows: list[IndexedResource] = []
    for p in PAYERS:
        org = {"resourceType": "Organization", "name": f"BENCH {p}", "identifier": [{"value": p}]}
        rows.append(IndexedResource("Organization", f"urn:org:{p}", orjson.dumps(org)))
    for i in range(n):
        member, family, given, dob, gender = MEMBERS[i % len(MEMBERS)]
        patient_url, cov_url, appt_url = f"urn:pat:{i}", f"urn:cov:{i}", f"urn:appt:{i}"
        patient = {
            "resourceType": "Patient",
            "name": [{"family": family, "given": [given]}],
            "birthDate": dob,
            "gender": gender,
        }
        coverage = {
            "resourceType": "Coverage",
            "status": "active",
            "subscriberId": member,
            "beneficiary": {"reference": patient_url},
            "payor": [{"reference": f"urn:org:{PAYERS[i % len(PAYERS)]}"}],
        }
        start = day + timedelta(minutes=i % 480)
        appt = {
            "resourceType": "Appointment",
            "status": "booked",
            "start": start.isoformat(),
            "participant": [{"actor": {"reference": patient_url}, "status": "accepted"}],
        }
        rows += [
            IndexedResource("Patient", patient_url, orjson.dumps(patient), patient_url),
            IndexedResource("Coverage", cov_url, orjson.dumps(coverage), patient_url),
            IndexedResource(
                "Appointment", appt_url, orjson.dumps(appt), patient_url, start, "booked"
            ),
        ]
    [mid] = [s.id for s in store.save_batch([Incoming(raw=b"bench", channel="bench")])]
    store.finish_batch([Processed(mid, "routed", resources=rows)])


def run(options: Options) -> dict[str, Any]:
    n = 200 if options.quick else 1000
    concurrency = 4
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlMessageStore(create_db_engine(f"sqlite:///{Path(tmp) / 'engine.db'}"))
        store.migrate()
        tz_day = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # a Tuesday
        _index(store, n, tz_day)
        config = PayerConfig(adapter="stub", latency_ms=50, max_concurrency=concurrency)
        payers = PayerSet(payers={}, default=config, origin={})
        service = EligibilityService(store, payers, Settings(timezone="UTC"))

        async def go() -> list[Any]:
            try:
                return list(await service.check_upcoming(start=tz_day.date(), days=1))
            finally:
                await service.close()

        start = time.perf_counter()
        outcomes = asyncio.run(go())
        elapsed = time.perf_counter() - start
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    assert len(outcomes) == n, (len(outcomes), n)
    print(
        f"  {n:,} appointments, {len(PAYERS)} payers x {concurrency} requests at once, 50 ms each: "
        f"{elapsed:.2f} s ({n / elapsed:,.0f} checks/s); verdicts {counts}"
    )
    goal = elapsed <= 10.0 if n == 1000 else None
    if goal is not None:
        print(f"  goal 1,000 in <= 10 s: {'met' if goal else 'NOT met'}")
    return {
        "suite": "eligibility",
        "quick": options.quick,
        "appointments": n,
        "seconds": elapsed,
        "verdicts": counts,
        "payers": len(PAYERS),
        "max_concurrency_per_payer": concurrency,
        "goal_met": goal,
        "environment": environment(["hl7-engine"]),
    }
