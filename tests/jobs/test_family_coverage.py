"""A dependent registered with the subscriber's member ID (the family shares one card) has a
Coverage of their own: the subscriber's is not taken over, and both appointments are checked.

Before the Coverage identity named its beneficiary and payer (engine/mappings/entries.py), the
dependent's ADT replaced the subscriber's Coverage in the index under the same fullUrl, and the
subscriber's appointment was no longer checked with the payer, silently."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from engine.adapters.registry import load_routes
from engine.flow.process import Processor
from engine.mappings import Mappings
from engine.store import Incoming, SqlMessageStore
from tests.jobs.conftest import MONDAY, ROUTES, service

#: Ana Rivera's member ID at the demo payer (engine/sim/demo.py), given to her son
MEMBER = "DEMO100001"


def _dependent_messages(day: datetime) -> list[bytes]:
    stamp = "20261127100000"
    pid = "PID|1||DEMO1009^^^DEMOCLINIC^MR||Rivera^Leo||20150704|M"
    adt = "\r".join(
        [
            f"MSH|^~\\&|DEMO|DEMOCLINIC|ENGINE|HUB|{stamp}||ADT^A04^ADT_A01|FAM-A-1|P|2.5.1",
            f"EVN|A04|{stamp}",
            pid,
            "PV1|1|O|CLINIC^EXAM1^1",
            "IN1|1|DEMO-PPO^Demo PPO^L|DEMOPAY^^^^NIIP|Demo Health Plan|||||||||||PPO|"
            f"Rivera^Ana|CHD^Child^HL70063|19850312||||1||||||||||||||{MEMBER}",
        ]
    )
    start, end = f"{day:%Y%m%d}150000", f"{day:%Y%m%d}153000"
    siu = "\r".join(
        [
            f"MSH|^~\\&|DEMO|DEMOCLINIC|ENGINE|HUB|{stamp}||SIU^S12^SIU_S12|FAM-S-1|P|2.5.1",
            f"SCH|FAM-P-1^DEMOCLINIC|FAM-F-1^DEMOCLINIC||||NEW^New^HL70276|||30|min|"
            f"^^30^{start}^{end}|||||FRONTDESK^Demo||||FRONTDESK^Demo|||||Booked",
            f"TQ1|1||||||{start}|{end}",
            pid,
            "RGS|1",
            f"AIS|1||99213^Office visit^C4|{start}|||30|min",
        ]
    )
    return [(adt + "\r").encode(), (siu + "\r").encode()]


def test_a_dependent_on_the_subscribers_member_id_has_a_coverage_of_their_own(
    indexed: SqlMessageStore, mappings: Mappings, tmp_path: Path
) -> None:
    svc = service(indexed)
    before = {t.patient["_full_url"]: t for t in svc.targets(MONDAY, 1)}
    (subscriber,) = [t for t in before.values() if t.coverage["subscriberId"] == MEMBER]

    indexed.save_batch(
        [Incoming(raw=raw, channel="test") for raw in _dependent_messages(datetime(2026, 11, 30))]
    )
    (tmp_path / "fam-routes").mkdir()
    (tmp_path / "fam-routes" / "r.yaml").write_text(ROUTES)
    processor = Processor(indexed, load_routes(defaults=tmp_path / "fam-routes"), mappings)
    while processor.process_batch():
        pass

    after = svc.targets(MONDAY, 1)
    on_member = [t for t in after if t.coverage["subscriberId"] == MEMBER]
    assert len(after) == len(before) + 1
    assert len(on_member) == 2
    # each patient's own Coverage, each naming that patient as beneficiary, the same payer
    assert len({t.coverage["_full_url"] for t in on_member}) == 2
    for t in on_member:
        assert t.coverage["beneficiary"]["reference"] == t.patient["_full_url"]
        assert t.payer["_full_url"] == subscriber.payer["_full_url"]
    (still,) = [t for t in on_member if t.patient["_full_url"] == subscriber.patient["_full_url"]]
    assert still.coverage["_full_url"] == subscriber.coverage["_full_url"]
    assert still.coverage["relationship"]["coding"][0]["code"] == "self"
    (child,) = [t for t in on_member if t is not still]
    assert child.coverage["relationship"]["coding"][0]["code"] == "child"
    assert child.subscriber is not None  # the 270 names Ana as subscriber, Leo as dependent

    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    asyncio.run(svc.close())
    assert len(outcomes) == 4
    rows = {r["appointment_url"]: r for r in indexed.eligibility_for_day(MONDAY)}
    assert rows[subscriber.appointment_url]["status"] == "eligible"
    assert rows[subscriber.appointment_url]["coverage_url"] == subscriber.coverage["_full_url"]
