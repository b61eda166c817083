"""The console's message search and message page on the real app and store (SQLite and
PostgreSQL): filters, keyset paging both ways, the ER7 named and escaped, the FHIR, the ACK,
deliveries; reprocess, resend to one destination and mark handled (admin, CSRF); every search,
view and action in the audit trail from the console."""

from __future__ import annotations

import asyncio
import html as html_text
import re
from pathlib import Path

import pytest
from sqlalchemy import update

from engine.api.auth import Role
from engine.flow.ingest import Ingest
from engine.store import Incoming, MessageQuery, SqlMessageStore
from engine.store.tables import messages
from tests.console.test_messages_page_support import (
    TOKEN,
    cells,
    client_for,
    dead_message,
    text_of,
)


def _trail(store: SqlMessageStore, n: int = 10) -> list[tuple[object, ...]]:
    return [
        (e.action, e.actor, e.source, e.message_id, e.patient_key, e.outcome)
        for e in store.audit_entries(limit=n)
    ]


def test_search_by_mrn_control_id_type_sender_and_state(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    a = dead_message(store, 1)
    b = dead_message(store, 2, ok=("fhir", "folder"))
    c = dead_message(store, 3, mrn="MRN1")
    client = client_for(store, tmp_path, Role.VIEWER)

    def ids(query: str) -> list[int]:
        answer = client.get(f"/console/messages?{query}")
        assert answer.status_code == 200, answer.text
        return [int(row[0]) for row in cells(answer.text, "messages") if row[0].isdigit()]

    assert ids("") == [c, b, a]
    assert ids("mrn=MRN1") == [c, a]
    assert ids("mrn=CLINIC%7CMRN2") == [b]
    assert ids("control_id=C2") == [b]
    assert ids("type=ADT%5EA04&state=dead") == [c, a]
    assert ids("state=delivered") == [b]
    assert ids("sender=FRONTDESK%5ECLINIC&trigger=A04") == [c, b, a]
    assert ids("since=2999-01-01") == []
    row = cells(client.get("/console/messages?control_id=C1").text, "messages")[0]
    assert row[6] == "dead" and "fhir (dead): HTTP 422 bad bundle" in row[7]
    # each search recorded, with the patient when one was asked for
    searches = [t for t in _trail(store, 20) if t[0] == "search-messages"]
    assert ("search-messages", "olga", "console", None, "MRN1", "ok") in searches
    assert ("search-messages", "olga", "console", None, "CLINIC|MRN2", "ok") in searches
    # one not made by MRN once per patient of the messages it showed, in the order shown, at
    # one time (IHE BALP: one AuditEvent per patient); one that showed none without a patient
    views: dict[tuple[object, ...], list[str | None]] = {}
    for e in reversed(store.audit_entries(limit=50)):
        if e.action == "search-messages":
            views.setdefault((e.at, e.detail, e.outcome), []).append(e.patient_key)
    assert [(detail, patients) for (_, detail, _), patients in views.items()] == [
        ("3 shown; no filter", ["CLINIC|MRN1", "CLINIC|MRN2"]),
        ("2 shown; one patient", ["MRN1"]),  # by MRN: the MRN asked for
        ("1 shown; one patient", ["CLINIC|MRN2"]),
        ("1 shown; control_id C2", ["CLINIC|MRN2"]),
        ("2 shown; type ADT^A04, state dead", ["CLINIC|MRN1"]),
        ("1 shown; state delivered", ["CLINIC|MRN2"]),
        ("3 shown; trigger A04, sender FRONTDESK^CLINIC", ["CLINIC|MRN1", "CLINIC|MRN2"]),
        ("0 shown; since 2999-01-01", [None]),
        ("1 shown; control_id C1", ["CLINIC|MRN1"]),
    ]


def test_a_bad_filter_is_named_not_a_server_error(store: SqlMessageStore, tmp_path: Path) -> None:
    client = client_for(store, tmp_path, Role.VIEWER)
    answer = client.get("/console/messages?state=lost")
    assert answer.status_code == 422 and "unknown state 'lost'" in text_of(answer.text)
    answer = client.get("/console/messages?since=yesterday")
    assert answer.status_code == 422 and "is not a date" in text_of(answer.text)
    assert client.get("/console/messages?before=-1").status_code == 422
    assert client.get(f"/console/messages?mrn={'9' * 300}").status_code == 422


def test_keyset_paging_older_and_newer(store: SqlMessageStore, tmp_path: Path) -> None:
    rows = [
        Incoming(raw=b"MSH|", channel="mllp", control_id=f"P{n}", patient_key="A|1")
        for n in range(120)
    ]
    made = [s.id for s in store.save_batch(rows)]
    client = client_for(store, tmp_path, Role.VIEWER)
    first = client.get("/console/messages?mrn=A%7C1").text
    assert [int(r[0]) for r in cells(first, "messages")] == made[::-1][:50]
    assert "Newer" not in text_of(first)
    older = re.search(r'href="(/console/messages\?[^"]+)" rel="next"', first)
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&")).text
    assert [int(r[0]) for r in cells(second, "messages")] == made[::-1][50:100]
    newer = re.search(r'href="(/console/messages\?[^"]*)" rel="prev"', second)
    assert newer is not None
    back = client.get(newer.group(1).replace("&amp;", "&")).text
    assert [int(r[0]) for r in cells(back, "messages")] == made[::-1][:50]


def test_the_message_page_names_fields_escapes_and_shows_fhir_ack_and_deliveries(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    mid = dead_message(store, 7)
    # a value that would be markup if it were not escaped
    with store.db_engine.begin() as conn:
        raw = (
            b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|C7|P|2.5.1\r"
            b"PID|1||MRN7^^^CLINIC^MR||<script>alert(1)</script>^Alice||19800101|F\r"
        )
        conn.execute(update(messages).where(messages.c.id == mid).values(raw=raw))
    client = client_for(store, tmp_path, Role.VIEWER)
    page = client.get(f"/console/messages/{mid}")
    assert page.status_code == 200
    html = page.text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    text = text_of(html)
    assert "PID Patient Identification" in text
    assert "PID-3 Patient Identifier List (CX)" in text
    assert ".1 ID Number: MRN7" in text and ".4 Assigning Authority: CLINIC" in text
    assert "MSH-9 Message Type (MSG)" in text
    assert '"resourceType": "Bundle"' in text  # the FHIR, indented
    # the ACK, as ingest builds it from the stored id and time
    assert "MSA|AA|C7" in text and f"|A{mid}|" in text
    assert [r[1:6] for r in cells(html, "deliveries")] == [
        ["fhir", "adt", "dead", "1", "HTTP 422 bad bundle"],
        ["folder", "adt", "delivered", "1", ""],
    ]
    assert "Reprocess" not in text  # a viewer sees, does not act
    assert _trail(store, 1) == [("view-message", "olga", "console", mid, "CLINIC|MRN7", "ok")]
    raw_answer = client.get(f"/console/messages/{mid}/raw")
    assert raw_answer.status_code == 200 and raw_answer.content == raw
    assert _trail(store, 1) == [("view-payload", "olga", "console", mid, "CLINIC|MRN7", "ok")]
    missing = client.get(f"/console/messages/{mid + 1000}")
    assert missing.status_code == 404 and f"no message {mid + 1000}" in missing.text
    assert client.get("/console/messages/0").status_code == 422


def test_resend_to_one_destination_reprocess_and_mark_handled(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    mid = dead_message(store, 1)
    client = client_for(store, tmp_path, Role.ADMIN)
    page = client.get(f"/console/messages/{mid}").text
    assert '<option value="fhir" selected>' in page and '<option value="folder">' in page
    # without the session's CSRF token: refused, nothing done
    refused = client.post(f"/console/messages/{mid}/resend", data={"destination": "fhir"})
    assert refused.status_code == 403
    sent = client.post(
        f"/console/messages/{mid}/resend",
        data={"destination": "fhir", "csrf_token": TOKEN},
        follow_redirects=False,
    )
    assert sent.status_code == 303 and sent.headers["location"].endswith("?done=resent")
    view = store.get(mid)
    assert view is not None and view.state == "routed"
    assert sorted((d.destination, d.state) for d in view.deliveries) == [
        ("fhir", "pending"),
        ("fhir", "resent"),
        ("folder", "delivered"),
    ]
    again = client.post(
        f"/console/messages/{mid}/resend", data={"destination": "fhir", "csrf_token": TOKEN}
    )
    assert again.status_code == 200 and "already queued" in text_of(again.text)
    unknown = client.post(
        f"/console/messages/{mid}/resend", data={"destination": "epic", "csrf_token": TOKEN}
    )
    assert unknown.status_code == 422 and "has no destination 'epic'" in text_of(unknown.text)

    other = dead_message(store, 2)
    marked = client.post(
        f"/console/messages/{other}/handled",
        data={"note": "called the vendor", "csrf_token": TOKEN},
        follow_redirects=False,
    )
    assert marked.status_code == 303
    listing = client.get("/console/messages?control_id=C2").text
    assert "handled" in cells(listing, "messages")[0][6]
    twice = client.post(f"/console/messages/{other}/handled", data={"csrf_token": TOKEN})
    assert twice.status_code == 409 and "marked handled by olga" in text_of(twice.text)

    replayed = client.post(
        f"/console/messages/{other}/reprocess", data={"csrf_token": TOKEN}, follow_redirects=False
    )
    assert replayed.status_code == 303
    found = re.search(r"/console/messages/(\d+)\?done=reprocessed", replayed.headers["location"])
    assert found is not None
    new_id = int(found.group(1))
    assert new_id > other
    shown = client.get(replayed.headers["location"]).text
    assert f"received again from message {other}" in text_of(shown)
    assert "a replay: received again inside the engine" in text_of(shown)
    actions = [(t[0], t[3], t[5]) for t in _trail(store, 30) if t[0] != "view-message"]
    assert ("resend", mid, "ok") in actions and ("resend", mid, "refused") in actions
    assert ("mark-handled", other, "ok") in actions and (
        "mark-handled",
        other,
        "refused",
    ) in actions
    assert ("replay", other, "ok") in actions
    assert all(e.source == "console" for e in store.audit_entries(limit=30))


@pytest.mark.parametrize("action", ["reprocess", "resend", "handled"])
def test_a_viewer_may_not_act_and_the_refusal_is_recorded(
    store: SqlMessageStore, tmp_path: Path, action: str
) -> None:
    mid = dead_message(store, 1)
    client = client_for(store, tmp_path, Role.VIEWER)
    answer = client.post(
        f"/console/messages/{mid}/{action}", data={"destination": "fhir", "csrf_token": TOKEN}
    )
    assert answer.status_code == 403
    [entry] = store.audit_entries(limit=1)
    expected = {"reprocess": "replay", "resend": "resend", "handled": "mark-handled"}[action]
    assert (entry.action, entry.outcome, entry.source) == (expected, "refused", "console")
    view = store.get(mid)
    assert view is not None and view.state == "dead"


def test_pages_need_the_viewer_role(store: SqlMessageStore, tmp_path: Path) -> None:
    client = client_for(store, tmp_path, Role.FRONT_DESK)
    assert client.get("/console/messages").status_code == 403
    assert client.get("/console/messages/1").status_code == 403


@pytest.mark.parametrize("enhanced", [False, True])
def test_the_ack_shown_is_the_ack_ingest_sent(
    store: SqlMessageStore, tmp_path: Path, enhanced: bool
) -> None:
    raw = (
        "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|ACK1|P|2.5.1"
        + ("|||AL|NE" if enhanced else "")
        + "\rPID|1||MRN5^^^CLINIC^MR||Testpatient^Alice\r"
    ).encode()

    async def receive() -> bytes | None:
        ingest = Ingest(store, identity=("HUB-APP", "HUB-FAC"))
        return (await ingest.receive(raw, channel="mllp")).ack

    sent = asyncio.run(receive())
    assert sent is not None
    [line] = store.search(MessageQuery())
    client = client_for(store, tmp_path, Role.VIEWER)
    page = client.get(f"/console/messages/{line.id}").text
    shown = re.search(r'<pre class="ack">(.*?)</pre>', page, re.S)
    assert shown is not None
    expected = sent.decode().replace("\r", "\n").rstrip("\n")
    assert html_text.unescape(shown.group(1)).rstrip("\n") == expected


def test_no_ack_is_made_up_for_a_message_refused_at_receipt(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    [stored] = store.save_batch(
        [
            Incoming(
                raw=b"MSH|^~\\&|A|B|||20260102||ZZZ^Z01|R1|P|2.5.1\r",
                channel="mllp",
                state="error",
                reason="no route takes ZZZ^Z01",
            )
        ]
    )
    page = client_for(store, tmp_path, Role.VIEWER).get(f"/console/messages/{stored.id}").text
    assert '<pre class="ack">' not in page
    assert "refused at receipt" in text_of(page)


def test_a_large_message_is_shown_in_part(store: SqlMessageStore, tmp_path: Path) -> None:
    from engine.store.console_stats import RAW_SHOWN_BYTES

    big = (
        b"MSH|^~\\&|A|B|||20260102||MDM^T02|BIG1|P|2.5.1\r"
        + b"OBX|1|ED|DOC||^AP^^Base64^"
        + b"QUFB" * (RAW_SHOWN_BYTES // 2)
        + b"\r"
    )
    [stored] = store.save_batch([Incoming(raw=big, channel="mllp", control_id="BIG1")])
    client = client_for(store, tmp_path, Role.VIEWER)
    page = client.get(f"/console/messages/{stored.id}")
    assert page.status_code == 200
    assert f"The first {RAW_SHOWN_BYTES} of {len(big)} bytes" in text_of(page.text)
    assert len(page.content) < 3 * RAW_SHOWN_BYTES
    assert client.get(f"/console/messages/{stored.id}/raw").content == big
