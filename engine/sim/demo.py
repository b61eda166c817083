"""``engine demo``: send a few synthetic patients with appointments tomorrow to a running engine,
so a new user sees the whole flow: registration (ADT^A04 with insurance), scheduling (SIU^S12),
mapping to FHIR, delivery to the stub FHIR server, and an eligibility check against the stub payer.

The patients and member IDs are synthetic and match the stub payer's roster
(engine/sim/payer/specs/roster.yaml), one of each answer it gives.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import date, datetime, timedelta

__all__ = ["demo_messages", "send"]

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
