"""The campaign's fixed load: MLLP senders that behave like EHRs, each message numbered within
its patient so that order can be checked at the destinations.

Each of the ``senders`` owns its own patients and sends its messages one at a time, waiting for
the ACK, round-robin over its patients. A message is sent again (same control ID) until it is
ACKed AA: after a NAK (AE/AR), a broken connection or a missing ACK, as an EHR's interface
engine does. The next message waits for that, so each patient's messages are received in
sequence order. A sender gives up at ``deadline`` (the message and those after it stay un-ACKed).

Control IDs are ``<patient>.<seq>`` (``P0042.17``: the 17th message of patient 42), MRNs
``CH<patient>``; the data is synthetic.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Item", "LoadResult", "plan", "run_senders", "split_control_id"]

START, END = b"\x0b", b"\x1c\r"
#: how long a sender waits for an ACK before it takes the connection for broken
ACK_TIMEOUT_S = 15.0
#: a pause before sending again after a NAK or a broken connection
RETRY_PAUSE_S = 0.2

MESSAGE = (
    "MSH|^~\\&|CHAOS|CLINIC|ENGINE|HUB|20261203090000-0500||ADT^A08^ADT_A01|{cid}|P|2.5.1\r"
    "EVN|A08|20261203090000-0500\r"
    "PID|1||CH{p:04d}^^^CLINIC^MR||Chaos^Patient{p}^S{seq}||19800101|F\r"
    "PV1|1|O\r"
)


@dataclass(frozen=True)
class Item:
    control_id: str
    patient: int
    seq: int
    raw: bytes


def split_control_id(cid: str) -> tuple[int, int] | None:
    """``P0042.17`` → (42, 17); None for a control ID the campaign did not make."""
    head, dot, tail = cid.partition(".")
    if not dot or not head.startswith("P") or not head[1:].isdigit() or not tail.isdigit():
        return None
    return int(head[1:]), int(tail)


def plan(messages: int, senders: int = 8, patients_per_sender: int = 25) -> list[list[Item]]:
    """``messages`` messages over ``senders`` senders: sender s sends to patients s*k .. s*k+k-1
    in turn, each patient's sequence numbers counting up from 0."""
    out: list[list[Item]] = [[] for _ in range(senders)]
    seqs: Counter[int] = Counter()
    for n in range(messages):
        s = n % senders
        p = s * patients_per_sender + (n // senders) % patients_per_sender
        seq = seqs[p]
        seqs[p] += 1
        cid = f"P{p:04d}.{seq}"
        out[s].append(Item(cid, p, seq, MESSAGE.format(cid=cid, p=p, seq=seq).encode()))
    return out


@dataclass
class LoadResult:
    """What the senders saw: AA-ACKed control IDs (in ACK order), NAKs by code, connection
    failures, and the ACK latencies of the AAs."""

    acked: list[str] = field(default_factory=list)
    naks: Counter[str] = field(default_factory=Counter)
    broken: int = 0
    latencies: list[float] = field(default_factory=list)
    unsent: int = 0


def _msa_code(ack: bytes) -> str:
    if b"\rMSA|" in ack:
        return ack.split(b"\rMSA|", 1)[1][:2].decode(errors="replace")
    return "??"


async def _sender(
    port: int, items: list[Item], result: LoadResult, deadline: float, interval: float
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    i = 0
    next_at = time.monotonic()
    paced = -1  # the item last paced (a message sent again is not paced again)
    while i < len(items):
        if time.monotonic() > deadline:
            result.unsent += len(items) - i
            break
        if interval and paced != i:
            paced = i
            next_at += interval
            if next_at > time.monotonic():
                await asyncio.sleep(next_at - time.monotonic())
        item = items[i]
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, limit=1 << 20), 5
                )
            assert reader is not None and writer is not None
            start = time.perf_counter()
            writer.write(START + item.raw + END)
            await writer.drain()
            ack = await asyncio.wait_for(reader.readuntil(END), ACK_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            result.broken += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        code = _msa_code(ack)
        if code in ("AA", "CA"):
            result.latencies.append(time.perf_counter() - start)
            result.acked.append(item.control_id)
            i += 1
        else:
            result.naks[code] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
    if writer is not None:
        writer.close()


async def run_senders(
    port: int | Sequence[int],
    items: list[list[Item]],
    deadline: float,
    rate: float = 0.0,
    result: LoadResult | None = None,
) -> LoadResult:
    """Every sender's items to the MLLP listener on 127.0.0.1:``port`` (several ports: sender
    ``s`` to ``port[s % len(port)]``, as EHRs each configured for one node), until done or
    ``deadline`` (a ``time.monotonic()`` instant). With ``rate`` (messages/s over all senders)
    each sender keeps to its share of it, catching up after an outage as an EHR's queue does;
    without, back to back. ``result`` fills as the ACKs come (a fault may watch it)."""
    result = result if result is not None else LoadResult()
    interval = len(items) / rate if rate else 0.0
    ports = [port] if isinstance(port, int) else list(port)
    await asyncio.gather(
        *(
            _sender(ports[s % len(ports)], mine, result, deadline, interval)
            for s, mine in enumerate(items)
        )
    )
    return result
