"""An MLLP load generator: N concurrent senders, each sending its messages one at a time and
waiting for the ACK (as an EHR does), measuring each ACK's latency.

``python -m bench.mllp_load PORT SENDERS COUNT [RATE]`` prints one JSON line: messages, seconds,
rate, p50/p99 latency in ms, and how many ACKs were AA/CA. With RATE (messages/s over all
senders) the messages are paced (an open-loop offered load, the senders staggered so that the
messages are evenly spaced) instead of sent back to back. With ``MLLP_LOAD_ACKS=FILE`` in the
environment it also writes each ACK's wall-clock time to FILE, one a line.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

START, END = b"\x0b", b"\x1c\r"

MESSAGE = (
    "MSH|^~\\&|LOADGEN|CLINIC|ENGINE|HUB|20260102030405-0500||ADT^A08^ADT_A01|{cid}|P|2.5.1\r"
    "EVN|A08|20260102030405-0500\r"
    "PID|1||MRN{n}^^^CLINIC^MR||Loadtest^Patient{n}||19800101|F|||1 Main St^^Springfield^IL^62701\r"
    "PV1|1|O|CLINIC^EXAM1^1||||1234567893^Testdoc^Tess^^^^^^NPI\r"
)


async def sender(
    port: int,
    who: int,
    senders: int,
    count: int,
    interval: float,
    latencies: list[float],
    codes: list[str],
    acked: list[float],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    loop = asyncio.get_running_loop()
    # paced senders are staggered, so together they offer an evenly spaced load
    next_at = loop.time() + (who * interval / senders if interval else 0.0)
    for i in range(count):
        if interval:
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        n = who * 1_000_000 + i
        payload = MESSAGE.format(cid=f"L{time.time_ns()}-{n}", n=n).encode()
        start = time.perf_counter()
        writer.write(START + payload + END)
        ack = await reader.readuntil(END)
        latencies.append(time.perf_counter() - start)
        acked.append(time.time())
        # the MSA segment, not "MSA|" anywhere: python-hl7's random MSH-10 may end in "MSA"
        msa = ack.split(b"\rMSA|", 1)[1][:2] if b"\rMSA|" in ack else b"??"
        codes.append(msa.decode())
    writer.close()
    await writer.wait_closed()


async def main(port: int, senders: int, count: int, rate: float) -> dict[str, float]:
    latencies: list[float] = []
    codes: list[str] = []
    acked: list[float] = []
    per = count // senders
    interval = senders / rate if rate else 0.0
    start = time.perf_counter()
    await asyncio.gather(
        *(sender(port, s, senders, per, interval, latencies, codes, acked) for s in range(senders))
    )
    if os.environ.get("MLLP_LOAD_ACKS"):
        # each ACK's wall-clock time, one a line: for a caller that compares time slots
        Path(os.environ["MLLP_LOAD_ACKS"]).write_text("".join(f"{t:.6f}\n" for t in acked))
    elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "messages": len(latencies),
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "positive": sum(c in ("AA", "CA") for c in codes),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    result = asyncio.run(
        main(int(args[0]), int(args[1]), int(args[2]), float(args[3]) if len(args) > 3 else 0.0)
    )
    print(json.dumps(result))
