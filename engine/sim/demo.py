"""``engine demo``: send a few synthetic patients with appointments tomorrow to a running engine,
so a new user sees the whole flow: registration (ADT^A04 with insurance), scheduling (SIU^S12),
mapping to FHIR, delivery to the stub FHIR server, and an eligibility check against the stub payer.
Then the front office's paper: a synthetic scanned insurance card, consent and referral
(:mod:`engine.sim.pdf`) dropped into the watched documents folder, and one more uploaded over
``POST /documents``, for the example routes to deliver to the stub Epic and athenahealth.

The patients and member IDs are synthetic and match the stub payer's roster
(engine/sim/payer/specs/roster.yaml), one of each answer it gives.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import orjson

from engine.sim.pdf import synthetic_pdf

__all__ = [
    "DEMO_DOCUMENTS",
    "DemoDocument",
    "demo_messages",
    "drop_documents",
    "send",
    "upload_document",
]

#: (MRN, family, given, DOB, sex, payer id, payer name, member id)
PATIENTS = (
    ("DEMO1001", "Rivera", "Ana", "19850312", "F", "DEMOPAY", "Demo Health Plan", "DEMO100001"),
    ("DEMO1002", "Okafor", "Chidi", "19700101", "M", "DEMOPAY", "Demo Health Plan", "DEMO100002"),
    ("DEMO1003", "Lindqvist", "Maja", "19921120", "F", "DEMOPAY", "Demo Health Plan", "NOSUCH999"),
)


def _next_business_day(today: date) -> date:
    day = today + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _segment(name: str, fields: dict[int, str]) -> str:
    return "|".join([name] + [fields.get(n, "") for n in range(1, max(fields) + 1)])


def demo_messages(today: date | None = None) -> Iterator[tuple[str, bytes]]:
    """ADT^A04 (with IN1) and SIU^S12 for each demo patient, appointments the next business day."""
    day = _next_business_day(today or date.today())
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    for n, (mrn, family, given, dob, sex, payer, payer_name, member) in enumerate(PATIENTS):
        start = f"{day:%Y%m%d}{9 + n:02d}0000"
        end = f"{day:%Y%m%d}{9 + n:02d}3000"
        pid = f"PID|1||{mrn}^^^DEMOCLINIC^MR||{family}^{given}||{dob}|{sex}"
        adt = "\r".join(
            [
                f"MSH|^~\\&|DEMO|DEMOCLINIC|ENGINE|HUB|{stamp}||ADT^A04^ADT_A01|DEMO-A-{mrn}-{stamp}|P|2.5.1",
                f"EVN|A04|{stamp}",
                pid,
                "PV1|1|O|CLINIC^EXAM1^1",
                f"IN1|1|DEMO-PPO^Demo PPO^L|{payer}^^^^NIIP|{payer_name}|||||||||||PPO|"
                f"{family}^{given}|SEL^Self^HL70063|{dob}||||1||||||||||||||{member}",
            ]
        )
        siu = "\r".join(
            [
                f"MSH|^~\\&|DEMO|DEMOCLINIC|ENGINE|HUB|{stamp}||SIU^S12^SIU_S12|DEMO-S-{mrn}-{stamp}|P|2.5.1",
                _segment(
                    "SCH",
                    {
                        1: f"DEMO-P-{mrn}^DEMOCLINIC",
                        2: f"DEMO-F-{mrn}^DEMOCLINIC",
                        6: "NEW^New^HL70276",
                        7: "OFFICE^Office visit",
                        8: "ROUTINE^Routine",
                        9: "30",
                        10: "min",
                        11: f"^^30^{start}^{end}",
                        16: "FRONTDESK^Demo",
                        20: "FRONTDESK^Demo",
                        25: "Booked",
                    },
                ),
                f"TQ1|1||||||{start}|{end}",
                pid,
                "RGS|1",
                f"AIS|1||99213^Office visit^C4|{start}|||30|min",
            ]
        )
        yield f"{family}: registration", (adt + "\r").encode()
        yield f"{family}: appointment {day:%a %d %b} {9 + n}:00", (siu + "\r").encode()


def send(host: str, port: int) -> list[tuple[str, str]]:
    """Send the demo messages over MLLP; (what, MSA-1 of the ACK) each."""
    out: list[tuple[str, str]] = []
    with socket.create_connection((host, port), timeout=10) as sock:
        for label, raw in demo_messages():
            sock.sendall(b"\x0b" + raw + b"\x1c\r")
            buf = b""
            while not buf.endswith(b"\x1c\r"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the engine closed the connection")
                buf += chunk
            code = buf.split(b"MSA|", 1)[1][:2].decode() if b"MSA|" in buf else "??"
            out.append((label, code))
    return out


@dataclass(frozen=True)
class DemoDocument:
    """A synthetic scanned document for a demo patient; ``sidecar`` says how the folder learns
    whose it is: a ``<name>.json`` beside it, or else its name (``MRN_type_YYYYMMDD.pdf``)."""

    mrn: str
    patient: str
    document_type: str
    title: str
    sidecar: bool


#: one paper each for the demo patients: what the front desk scans at check-in
DEMO_DOCUMENTS = (
    DemoDocument("DEMO1001", "Rivera, Ana", "insurance-card", "Insurance card, front", False),
    DemoDocument("DEMO1002", "Okafor, Chidi", "consent", "Consent to treat", True),
    DemoDocument("DEMO1003", "Lindqvist, Maja", "referral", "Referral letter", False),
)

#: the document uploaded over HTTP: a second paper for the first patient
UPLOADED = DemoDocument("DEMO1001", "Rivera, Ana", "consent", "Consent to treat", False)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write beside ``path`` under a hidden name, then rename: the folder never sees half a file."""
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data)
    os.replace(part, path)


def drop_documents(inbox: Path, today: date | None = None) -> list[Path]:
    """Write :data:`DEMO_DOCUMENTS` as PDFs into ``inbox`` (created if missing); their paths.

    A sidecar is written before its PDF, so the folder finds both when it sees the PDF.
    """
    day = today or date.today()
    inbox.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%H%M%S")
    paths: list[Path] = []
    for doc in DEMO_DOCUMENTS:
        data = synthetic_pdf(doc.document_type, doc.patient, mrn=doc.mrn, date=day.isoformat())
        if doc.sidecar:
            path = inbox / f"scan-{doc.mrn}-{stamp}.pdf"
            meta = {
                "mrn": doc.mrn,
                "document_type": doc.document_type,
                "date": day.isoformat(),
                "title": doc.title,
            }
            _write_atomically(path.with_suffix(".json"), orjson.dumps(meta))
        else:
            path = inbox / f"{doc.mrn}_{doc.document_type}_{day:%Y%m%d}.pdf"
        _write_atomically(path, data)
        paths.append(path)
    return paths


def upload_document(
    base_url: str, token: str, today: date | None = None, *, timeout_s: float = 30.0
) -> tuple[int, dict[str, object]]:
    """POST :data:`UPLOADED` to ``{base_url}/documents`` (multipart); (status, JSON answer)."""
    day = today or date.today()
    doc = UPLOADED
    data = synthetic_pdf(doc.document_type, doc.patient, mrn=doc.mrn, date=day.isoformat())
    response = httpx.post(
        f"{base_url.rstrip('/')}/documents",
        headers={"Authorization": f"Bearer {token}"},
        files={"file": (f"{doc.document_type}.pdf", data, "application/pdf")},
        data={
            "mrn": doc.mrn,
            "document_type": doc.document_type,
            "date": day.isoformat(),
            "title": doc.title,
        },
        timeout=timeout_s,
    )
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:200]}
    return response.status_code, body if isinstance(body, dict) else {"answer": body}
