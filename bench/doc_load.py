"""A document upload load generator: N concurrent uploaders, each POSTing its synthetic PDFs to
``/documents`` one at a time (multipart/form-data, as a front-desk app would, framed by the
loader itself: see :func:`_form`) and waiting for the answer.

``python -m bench.doc_load URL UPLOADERS COUNT SIZE`` (the bearer token in ``DOC_LOAD_TOKEN``, not
on the command line, where any process list shows it) prints one JSON line: documents,
seconds, rate, p50/p99 latency in ms, and how many answers were 2xx. Every document is unique
(the store keeps one copy of the same bytes for the same patient, which would flatter the
rate): one synthetic PDF of SIZE bytes is built once and each upload overwrites 16 bytes of its
padding stream with fresh random ones, so the loader spends its time uploading, not generating.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time

import httpx

from engine.sim.epic_fhir import load_mrn
from engine.sim.pdf import synthetic_pdf

TYPES = ("insurance-card", "consent", "referral", "lab-report")
#: the demo patients, whom the stub EHRs know (an unknown patient's document waits: needs-patient)
DEMO_MRNS = ("DEMO1001", "DEMO1002", "DEMO1003")


def _mrns() -> tuple[str, ...]:
    """The patients the documents are for: ``DOC_LOAD_PATIENTS=N`` spreads them over the stub
    Epic's N synthetic load patients (``engine stub-epic --load-patients N``), as a clinic's day
    spreads them over its patients; else the three demo patients (whom every stub knows). The
    engine keeps one delivery in flight per patient and destination, so the patient count
    bounds how many deliveries run at once."""
    n = int(os.environ.get("DOC_LOAD_PATIENTS", "0") or 0)
    return tuple(load_mrn(i) for i in range(1, n + 1)) if n else DEMO_MRNS


MRNS = _mrns()


def _template(size: int) -> tuple[bytes, int]:
    """A PDF of ``size`` bytes, and where in its padding stream the unique bytes go."""
    data = synthetic_pdf("referral", "Loadtest, Patient", mrn="LOAD0", target_size=size, seed=1)
    at = data.rfind(b">>\nstream\n") + len(b">>\nstream\n")
    assert at > 0 and at + 16 < size
    return data, at


_BOUNDARY = "docloadboundary7f3a9c"


def _form(n: int, body: bytes) -> bytes:
    """The multipart/form-data body of upload ``n``: its fields and the file, framed by hand
    (the encoding httpx's ``files=`` does, without copying the document through its
    generators: the loader shares the engine's cores, so its CPU counts against the rate)."""
    head = "".join(
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (
            ("mrn", MRNS[n % len(MRNS)]),
            ("document_type", TYPES[n % len(TYPES)]),
            ("date", "2026-12-01"),
        )
    )
    head += (
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="scan-{n}.pdf"\r\nContent-Type: application/pdf\r\n\r\n'
    )
    return b"".join((head.encode(), body, f"\r\n--{_BOUNDARY}--\r\n".encode()))


async def uploader(
    client: httpx.AsyncClient,
    token: str,
    who: int,
    count: int,
    template: tuple[bytes, int],
    latencies: list[float],
    statuses: list[int],
) -> None:
    data, at = template
    body = bytearray(data)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={_BOUNDARY}",
    }
    for i in range(count):
        body[at : at + 16] = os.urandom(16)
        n = who * 1_000_000 + i
        start = time.perf_counter()
        response = await client.post("/documents", headers=headers, content=_form(n, body))
        latencies.append(time.perf_counter() - start)
        statuses.append(response.status_code)
        if response.status_code >= 300 and len(statuses) - sum(1 for s in statuses if s < 300) == 1:
            print(f"first refusal: {response.status_code} {response.text[:300]}", file=sys.stderr)


async def main(url: str, token: str, uploaders: int, count: int, size: int) -> dict[str, float]:
    template = _template(size)
    latencies: list[float] = []
    statuses: list[int] = []
    per = [count // uploaders + (1 if w < count % uploaders else 0) for w in range(uploaders)]
    limits = httpx.Limits(max_connections=uploaders)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                uploader(client, token, w, n, template, latencies, statuses)
                for w, n in enumerate(per)
            )
        )
        seconds = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {
        "documents": len(latencies),
        "accepted": sum(1 for s in statuses if 200 <= s < 300),
        "seconds": seconds,
        "rate": len(latencies) / seconds,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "size": size,
    }


if __name__ == "__main__":
    url, uploaders, count, size = sys.argv[1:5]
    token = os.environ["DOC_LOAD_TOKEN"]
    result = asyncio.run(main(url, token, int(uploaders), int(count), int(size)))
    print(json.dumps(result))
