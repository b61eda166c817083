"""The FHIR destination's HTTP client, side by side: httpx over httpcore's pool (httpx's
default), httpx over the engine's pool (engine/adapters/http_pool.py) and the engine's pool
without httpx's client (``DirectClient``, what the destination sends through), each POSTing
the same transaction Bundles to the stub FHIR server (``engine stub-fhir``, a separate
process), 8 at a time as the dispatcher sends to one destination, on the worker's event loop
(uvloop).

Each contestant's figure is the client process's CPU time a request (``time.process_time``,
what the worker pays) and its requests a second; the contestants alternate, ``repeat`` times
each, over the same bodies, on one client per run (connections kept alive, as in the worker).
The stub answers every one 200 (each Bundle's Patient is new: a conditional update creates).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson

from bench.harness import Options, environment
from bench.ingest_bench import _free_port, _wait_port
from engine.adapters.fhir_http import FHIR_JSON, fhir_client, lean_transport
from engine.adapters.http_pool import DirectClient
from engine.runtime import run as run_loop

__all__ = ["run"]

REQUESTS = 3000
AT_ONCE = 8
CONTESTANTS = {
    "httpcore": "httpx, httpcore's pool",
    "engine": "httpx, the engine's pool",
    "direct": "the engine's pool, direct",
}


def _bundle(run: int, i: int) -> bytes:
    """A one-entry transaction Bundle (a Patient by conditional update), new each run."""
    ident = f"{run}-{i}"
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{run:04d}{i:08d}",
                    "resource": {
                        "resourceType": "Patient",
                        "identifier": [{"system": "urn:bench:mrn", "value": ident}],
                        "name": [{"family": "Bench", "given": ["Synthetic"]}],
                        "birthDate": "1980-01-01",
                    },
                    "request": {
                        "method": "PUT",
                        "url": f"Patient?identifier=urn:bench:mrn|{ident}",
                    },
                }
            ],
        }
    )


async def _post_all(
    client: httpx.AsyncClient | DirectClient, url: str, bodies: list[bytes], tag: str
) -> None:
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(i: int, body: bytes) -> None:
        async with gate:
            headers = {"Content-Type": FHIR_JSON, "Idempotency-Key": f"{tag}-{i}"}
            resp = await client.request("POST", url, content=body, headers=headers)
            if resp.status_code >= 300:
                raise RuntimeError(f"stub answered {resp.status_code}")

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


def _one_run(url: str, contestant: str, run: int, count: int) -> tuple[float, float]:
    """(client CPU ms a request, requests a second) for one run of one contestant."""
    bodies = [_bundle(run, i) for i in range(count)]
    warm = [_bundle(run + 10_000, i) for i in range(AT_ONCE * 4)]

    async def main() -> tuple[float, float]:
        pool = lean_transport(True) if contestant != "httpcore" else None
        client = fhir_client(timeout_s=10, verify=True, transport=pool)
        # the FHIR destination's way since 6 December: requests straight to the pool
        sender = DirectClient(pool, client) if pool and contestant == "direct" else client
        try:
            await _post_all(sender, url, warm, f"w{run}")
            cpu, wall = time.process_time(), time.perf_counter()
            await _post_all(sender, url, bodies, f"r{run}")
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            await client.aclose()
        return cpu / count * 1000, count / wall

    return run_loop(main())


def run(options: Options) -> dict[str, Any]:
    count = 300 if options.quick else REQUESTS
    port = _free_port()
    stub = subprocess.Popen(
        [sys.executable, "-m", "engine", "stub-fhir", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    runs: dict[str, list[tuple[float, float]]] = {c: [] for c in CONTESTANTS}
    try:
        _wait_port(port, stub)
        url = f"http://127.0.0.1:{port}/fhir"
        for rep in range(options.repeat):
            for k, contestant in enumerate(CONTESTANTS):
                runs[contestant].append(_one_run(url, contestant, rep * 10 + k, count))
    finally:
        stub.terminate()
        stub.wait(timeout=10)
    rows = {
        c: {
            "label": CONTESTANTS[c],
            "requests": count,
            "cpu_ms_per_request": [round(cpu, 3) for cpu, _ in r],
            "requests_per_s": [round(rate) for _, rate in r],
            "median_cpu_ms": round(statistics.median(cpu for cpu, _ in r), 3),
            "median_rate": round(statistics.median(rate for _, rate in r)),
        }
        for c, r in runs.items()
    }
    _print(rows)
    return {
        "environment": environment(["httpx", "httpcore", "httptools", "uvloop"]),
        "at_once": AT_ONCE,
        "contestants": rows,
    }


def _print(rows: dict[str, dict[str, Any]]) -> None:
    print(f"{'contestant':28} {'requests':>8} {'client CPU ms/req':>18} {'req/s':>7}  (medians)")
    for row in rows.values():
        print(
            f"{row['label']:28} {row['requests']:>8,} {row['median_cpu_ms']:>18.3f}"
            f" {row['median_rate']:>7,}   runs: {row['cpu_ms_per_request']}"
        )
