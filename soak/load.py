"""The soak's load, a process of its own (so that sampling never delays an ACK): paced MLLP
senders and a trickle of document uploads, for a fixed time.

``python -m soak.load --port P --http URL --seconds S --rate R --senders N --acks FILE --docs FILE``
(the bearer token for ``/documents`` in ``SOAK_TOKEN``, not on the command line).

Each of the N senders keeps one connection and sends its messages one at a time, waiting for
the ACK, as an EHR does; together they offer R messages/s, evenly spaced (each sender's share
staggered). Every ACK is recorded with the wall time its message was sent, its latency and its
MSA-1 (``ERR`` for a broken connection or an ACK not received within 15 s) in ``--acks``
(CSV, appended every second): the soak reads it while the load runs.

The messages are synthetic: mostly ADT^A08 for 400 patients per sender, and every
``APPOINTMENT_EVERY``-th message slot a new patient's registration with insurance (ADT^A04 with
IN1, a member of the stub payer's roster) then its appointment the next business day (SIU^S12),
so that each scheduled eligibility run has new appointments to check.

One document (a synthetic PDF of ``--doc-size`` bytes, unique bytes each) is uploaded to
``POST /documents`` every ``--doc-interval`` seconds, each recorded in ``--docs`` (send time,
latency, HTTP status).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx

from engine import runtime
from engine.sim.pdf import synthetic_pdf

__all__ = ["main", "message"]

START, END = b"\x0b", b"\x1c\r"
ACK_TIMEOUT_S = 15.0
#: every this many message slots (over all senders), a new patient's A04 + SIU^S12 pair
APPOINTMENT_EVERY = 400
#: roster members of the stub payer (engine/sim/payer/specs/roster.yaml), as engine demo uses
MEMBERS = (
    ("Rivera", "Ana", "19850312", "F", "DEMO100001"),
    ("Okafor", "Chidi", "19700101", "M", "DEMO100002"),
    ("Lindqvist", "Maja", "19921120", "F", "NOSUCH999"),
)

A08 = (
    "MSH|^~\\&|SOAK|CLINIC|ENGINE|HUB|{stamp}||ADT^A08^ADT_A01|{cid}|P|2.5.1\r"
    "EVN|A08|{stamp}\r"
    "PID|1||SK{p}^^^CLINIC^MR||Soak^Patient{p}||19800101|F|||1 Main St^^Springfield^IL^62701\r"
    "PV1|1|O|CLINIC^EXAM1^1||||1234567893^Testdoc^Tess^^^^^^NPI\r"
)
A04 = (
    "MSH|^~\\&|SOAK|CLINIC|ENGINE|HUB|{stamp}||ADT^A04^ADT_A01|{cid}|P|2.5.1\r"
    "EVN|A04|{stamp}\r"
    "PID|1||SA{k}^^^CLINIC^MR||{family}^{given}||{dob}|{sex}\r"
    "PV1|1|O|CLINIC^EXAM1^1\r"
    "IN1|1|DEMO-PPO^Demo PPO^L|DEMOPAY^^^^NIIP|Demo Health Plan|||||||||||PPO|"
    "{family}^{given}|SEL^Self^HL70063|{dob}||||1||||||||||||||{member}\r"
)
S12 = (
    "MSH|^~\\&|SOAK|CLINIC|ENGINE|HUB|{stamp}||SIU^S12^SIU_S12|{cid}|P|2.5.1\r"
    "SCH|SOAK-P{k}^CLINIC|SOAK-F{k}^CLINIC||||NEW^New^HL70276|OFFICE^Office visit|"
    "ROUTINE^Routine|30|min|^^30^{start}^{end}|||||FRONTDESK^Soak||||FRONTDESK^Soak|||||Booked\r"
    "TQ1|1||||||{start}|{end}\r"
    "PID|1||SA{k}^^^CLINIC^MR||{family}^{given}||{dob}|{sex}\r"
    "RGS|1\r"
    "AIS|1||99213^Office visit^C4|{start}|||30|min\r"
)


def _next_business_day(today: date) -> date:
    day = today + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


_stamp: tuple[int, str] = (0, "")


def _now_stamp() -> str:
    """MSH-7's time to the second (formatted once a second: the senders share this process's
    two cores with the engine, so what they spend is taken from what is measured)."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, datetime.fromtimestamp(second).strftime("%Y%m%d%H%M%S"))
    return _stamp[1]


def message(slot: int, who: int, i: int, day: date) -> tuple[str, bytes]:
    """The message for global slot ``slot`` (sender ``who``'s ``i``-th): its type and bytes."""
    stamp = _now_stamp()
    cid = f"S{who}-{i}-{time.time_ns() % 10**12}"
    phase = slot % APPOINTMENT_EVERY
    if phase in (0, APPOINTMENT_EVERY // 2):
        k = slot // APPOINTMENT_EVERY
        family, given, dob, sex, member = MEMBERS[k % len(MEMBERS)]
        fields = {"stamp": stamp, "cid": cid, "k": k, "family": family, "given": given}
        fields |= {"dob": dob, "sex": sex, "member": member}
        if phase == 0:
            return "ADT^A04", A04.format(**fields).encode()
        at = datetime(day.year, day.month, day.day, 9) + timedelta(minutes=k % (8 * 60))
        start, end = f"{at:%Y%m%d%H%M%S}", f"{at + timedelta(minutes=30):%Y%m%d%H%M%S}"
        return "SIU^S12", S12.format(start=start, end=end, **fields).encode()
    return "ADT^A08", A08.format(stamp=stamp, cid=cid, p=who * 1000 + i % 400).encode()


class Recorder:
    """Rows kept in memory and appended to a CSV file every second."""

    def __init__(self, path: Path, header: str) -> None:
        self.path, self.rows = path, [header]

    def add(self, row: str) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            with self.path.open("a") as f:
                f.write("\n".join(rows) + "\n")


async def _sender(
    port: int, who: int, senders: int, rate: float, until: float, acks: Recorder
) -> None:
    loop = asyncio.get_running_loop()
    interval = senders / rate
    next_at = loop.time() + who * interval / senders
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    day = _next_business_day(date.today())
    i = 0
    while time.time() < until:
        next_at += interval
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        kind, payload = message(who + senders * i, who, i, day)
        i += 1
        sent = time.time()
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            assert reader is not None
            writer.write(START + payload + END)
            async with asyncio.timeout(ACK_TIMEOUT_S):  # no task per message, as wait_for's
                ack = await reader.readuntil(END)
            code = ack.split(b"\rMSA|", 1)[1][:2].decode() if b"\rMSA|" in ack else "??"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            code = "ERR"
            if writer is not None:
                writer.close()
            reader = writer = None
        ms = (time.perf_counter() - start) * 1000
        acks.add(f"{sent:.3f},{ms:.3f},{code},{kind}")
    if writer is not None:
        writer.close()


def _form(n: int, body: bytes, boundary: str) -> bytes:
    mrn = ("DEMO1001", "DEMO1002", "DEMO1003")[n % 3]
    fields = (("mrn", mrn), ("document_type", "referral"), ("date", f"{date.today()}"))
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="soak-{n}.pdf"\r\nContent-Type: application/pdf\r\n\r\n'
    )
    return b"".join((head.encode(), body, f"\r\n--{boundary}--\r\n".encode()))


async def _uploader(
    url: str, token: str, interval: float, size: int, until: float, docs: Recorder
) -> None:
    data = bytearray(synthetic_pdf("referral", "Soak, Patient", mrn="SOAK0", target_size=size))
    at = data.rfind(b">>\nstream\n") + len(b">>\nstream\n")
    boundary = "soakboundary5e2d1b"
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    n = 0
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.time() < until:
            data[at : at + 16] = os.urandom(16)  # every document unique
            sent, start = time.time(), time.perf_counter()
            try:
                status = (
                    await client.post(
                        "/documents", headers=headers, content=_form(n, bytes(data), boundary)
                    )
                ).status_code
            except httpx.HTTPError:
                status = 0
            docs.add(f"{sent:.3f},{(time.perf_counter() - start) * 1000:.1f},{status}")
            n += 1
            next_at += interval
            if next_at > loop.time():
                await asyncio.sleep(next_at - loop.time())


async def _flusher(recorders: list[Recorder], until: float) -> None:
    while time.time() < until + ACK_TIMEOUT_S:
        await asyncio.sleep(1.0)
        for r in recorders:
            r.flush()


async def run(args: argparse.Namespace, token: str) -> None:
    until = time.time() + args.seconds
    acks = Recorder(Path(args.acks), "sent,latency_ms,code,type")
    docs = Recorder(Path(args.docs), "sent,latency_ms,status")
    flusher = asyncio.create_task(_flusher([acks, docs], until))
    jobs = [
        _sender(args.port, s, args.senders, args.rate, until, acks) for s in range(args.senders)
    ]
    if args.doc_interval > 0:
        jobs.append(_uploader(args.http, token, args.doc_interval, args.doc_size, until, docs))
    await asyncio.gather(*jobs)
    flusher.cancel()
    acks.flush()
    docs.flush()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m soak.load")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--http", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--doc-interval", type=float, default=2.0)
    p.add_argument("--doc-size", type=int, default=1024 * 1024)
    p.add_argument("--acks", required=True)
    p.add_argument("--docs", required=True)
    args = p.parse_args(argv)
    runtime.run(run(args, os.environ.get("SOAK_TOKEN", "")))  # the engine's loop (uvloop)


if __name__ == "__main__":
    main()
