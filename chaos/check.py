"""The verdict, read off the destinations themselves: the stub FHIR server's log of the
transactions it applied (each once per ``Idempotency-Key``: ``<message id>-<destination>``) and
the files in the file destination's folder (the HL7v2 as received, MSH-10 read from each).

For every control ID the senders got AA for:

* delivered: applied at the FHIR server and written to the folder;
* duplicates: (any control ID) applied or written more than once (the same message stored twice
  under two ids, or a delivery sent again without its key);
* stuck: not delivered, and the store still has it waiting (received, processing, routed, or a
  delivery pending or waiting) when the drain bound is over;
* lost: not delivered and not waiting: never stored, dead-lettered, or failed;
* out of order: per patient, a message that arrived after one with a higher sequence number
  (FHIR: the log's order of first applications; folder: the files' modification times, ties
  not counted).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from chaos.load import split_control_id
from engine.store import create_db_engine
from engine.store.tables import deliveries, messages

__all__ = [
    "StoreView",
    "Verdict",
    "judge",
    "quantile",
    "read_fhir",
    "read_files",
    "read_store",
    "unfinished",
]

_WAITING_MESSAGES = ("received", "processing", "routed")
_WAITING_DELIVERIES = ("pending", "waiting")


@dataclass
class StoreView:
    """What the engine's store says: control ID of each message id, and the control IDs still
    waiting or given up (dead, error)."""

    cid_of: dict[int, str] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # control ID -> state
    #: what the waiting ones wait in: "message received", "delivery pending claimed" ...
    waiting_states: Counter[str] = field(default_factory=Counter)


def read_store(url: str) -> StoreView:
    db = create_db_engine(url)
    view = StoreView()
    try:
        with db.connect() as conn:
            for mid, cid, state in conn.execute(
                select(messages.c.id, messages.c.control_id, messages.c.state)
            ):
                view.cid_of[int(mid)] = str(cid)
                if state in _WAITING_MESSAGES:
                    view.waiting.add(str(cid))
                    view.waiting_states[f"message {state}"] += 1
                elif state not in ("delivered",):
                    view.failed[str(cid)] = str(state)
            for mid, state, attempts, error in conn.execute(
                select(
                    deliveries.c.message_id,
                    deliveries.c.state,
                    deliveries.c.attempts,
                    deliveries.c.last_error,
                ).where(deliveries.c.state.in_(_WAITING_DELIVERIES))
            ):
                view.waiting.add(view.cid_of.get(int(mid), "?"))
                tried = f"{attempts} attempts" if attempts else "never tried"
                why = f" ({str(error)[:60]})" if error else ""
                view.waiting_states[f"delivery {state}, {tried}{why}"] += 1
    finally:
        db.dispose()
    return view


def unfinished(url: str) -> int:
    """How many messages and deliveries the store still has to work off."""
    db = create_db_engine(url)
    try:
        with db.connect() as conn:
            n = len(
                conn.execute(
                    select(messages.c.id).where(messages.c.state.in_(_WAITING_MESSAGES))
                ).all()
            )
            n += len(
                conn.execute(
                    select(deliveries.c.id).where(deliveries.c.state.in_(_WAITING_DELIVERIES))
                ).all()
            )
    finally:
        db.dispose()
    return n


def read_fhir(log: Iterable[dict[str, Any]], cid_of: dict[int, str]) -> list[str]:
    """The control IDs of the transactions the stub applied, in the order it applied them
    (its answers replayed for a key seen before are not applications)."""
    out = []
    for entry in log:
        if entry.get("interaction") != "transaction" or entry.get("status") != 200:
            continue
        if entry.get("replayed"):
            continue
        mid = str(entry.get("idempotency_key") or "").split("-", 1)[0]
        out.append(cid_of.get(int(mid), f"?{mid}") if mid.isdigit() else "?")
    return out


def read_files(folder: Path) -> list[tuple[str, int]]:
    """(control ID, modification time in ns) of every HL7v2 file in the folder."""
    out = []
    for path in folder.glob("*.hl7") if folder.is_dir() else ():
        raw = path.read_bytes()
        msh = raw.split(b"\r", 1)[0].decode(errors="replace").split("|")
        out.append((msh[9] if len(msh) > 9 else "?", path.stat().st_mtime_ns))
    return out


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _inversions(arrivals: Iterable[str], strict_times: list[int] | None = None) -> int:
    """Messages that arrived after a later one of their patient (first arrivals only)."""
    highest: dict[int, tuple[int, int]] = {}  # patient -> (highest seq so far, its time)
    seen: set[str] = set()
    bad = 0
    for n, cid in enumerate(arrivals):
        parts = split_control_id(cid)
        if parts is None or cid in seen:
            continue
        seen.add(cid)
        patient, seq = parts
        at = strict_times[n] if strict_times is not None else n
        top = highest.get(patient)
        if top is not None and seq < top[0] and at > top[1]:
            bad += 1
        if top is None or seq > top[0]:
            highest[patient] = (seq, at)
    return bad


@dataclass
class Verdict:
    sent: int
    acked: int
    delivered: int
    duplicates: int
    lost: int
    out_of_order: int
    stuck: int
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.lost or self.out_of_order or self.stuck)


def judge(
    sent: int,
    acked: Iterable[str],
    store: StoreView,
    fhir_applied: list[str],
    files: list[tuple[str, int]],
) -> Verdict:
    acked_set = set(acked)
    at_fhir = Counter(fhir_applied)
    in_folder = Counter(cid for cid, _ in files)
    delivered = {c for c in acked_set if at_fhir[c] >= 1 and in_folder[c] >= 1}
    dupes = sorted(
        {c for c, n in at_fhir.items() if n > 1} | {c for c, n in in_folder.items() if n > 1}
    )
    missing = acked_set - delivered
    stuck = {c for c in missing if c in store.waiting}
    lost = sorted(missing - stuck)
    by_time = sorted(files, key=lambda f: f[1])
    disorder = _inversions(fhir_applied) + _inversions(
        [c for c, _ in by_time], [t for _, t in by_time]
    )
    return Verdict(
        sent=sent,
        acked=len(acked_set),
        delivered=len(delivered),
        duplicates=len(dupes),
        lost=len(lost),
        out_of_order=disorder,
        stuck=len(stuck),
        lost_ids=lost[:20],
        duplicate_ids=dupes[:20],
    )


def lost_detail(
    verdict: Verdict, store: StoreView, fhir: list[str], files: list[tuple[str, int]]
) -> list[str]:
    """One line per lost control ID (up to 20): stored?, its state, at FHIR?, in the folder?"""
    stored = set(store.cid_of.values())
    at_fhir, in_folder = set(fhir), {c for c, _ in files}
    per: dict[str, list[str]] = defaultdict(list)
    for cid in verdict.lost_ids:
        per[cid] += [
            "stored" if cid in stored else "NOT STORED",
            f"state={store.failed.get(cid, '-')}",
            "fhir" if cid in at_fhir else "no-fhir",
            "file" if cid in in_folder else "no-file",
        ]
    lines = [f"{cid}: {' '.join(v)}" for cid, v in per.items()]
    if verdict.stuck:
        waits = ", ".join(f"{n} {what}" for what, n in store.waiting_states.most_common())
        lines.append(f"still waiting in the store: {waits}")
    return lines
