"""The payer contract: one 270 out, the payer's X12 answer back (the EIP Request-Reply pattern).

A :class:`PayerAdapter` carries an eligibility inquiry (a 005010X279A1 270 interchange, as text) to
one payer or clearinghouse and returns what came back, as text: a 271, or a TA1/999 when the
payer could not read the request. The adapter is transport only; reading the answer is the
caller's (:func:`engine.x12.x271.read_271`, or :func:`check_answer` first to turn a TA1/999
reject into an error).

Failures of the exchange are two exceptions, in the engine's error tree (engine/errors.py)::

    EngineError
    ├── PayerUnavailable    no usable answer: timeout, connection refused, HTTP 5xx/408/429, an
    │                       answer that is not X12. Retryable (``retry_after_s``: the payer's wait)
    └── PayerRejected       the payer refused the request as sent: HTTP 4xx (but 408/429), a
                            rejected token request, a TA1/999 that says fix the request. Not
                            retryable until the request or the set-up changes

A payer that answers but cannot give eligibility *now* says so inside the 271 (AAA03 42 "Unable
to Respond at Current Time", AAA04 R): that is an answer, not :class:`PayerUnavailable`; the
caller reads it from the 271 and decides (it is retryable too).

Messages are PHI-free by contract: status codes, X12 codes, segment IDs, never a payload, a
member ID or a name, so they can go to logs and the store as they are.
"""

from __future__ import annotations

from typing import Protocol

from engine.errors import EngineError
from engine.x12.ack import AckResult, read_acks
from engine.x12.envelope import parse_interchanges
from engine.x12.errors import X12Error

__all__ = ["PayerAdapter", "PayerRejected", "PayerUnavailable", "check_answer"]


class PayerUnavailable(EngineError):
    """The payer gave no usable answer this time; sending the same request later may work."""

    def __init__(
        self, message: str, *, where: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, where=where)
        #: a wait the payer asked for (HTTP Retry-After on 429/503), seconds
        self.retry_after_s = retry_after_s


class PayerRejected(EngineError):
    """The payer refused the request as sent; sending it again unchanged would fail again."""


class PayerAdapter(Protocol):
    """One payer (or clearinghouse) connection. ``exchange`` may run concurrently; an adapter
    keeps at most its config's ``max_concurrency`` requests in flight and queues the rest."""

    name: str

    async def exchange(self, x270: str, *, timeout_s: float = 20.0) -> str:
        """Send one 270 interchange; the payer's answer as X12 text (a 271, or a TA1/999).

        ``timeout_s`` bounds the exchange from the moment it is sent (CAQH CORE real-time: 20 s).
        Raises :class:`PayerUnavailable` or :class:`PayerRejected`.
        """
        ...

    async def close(self) -> None: ...


def _ack_reasons(acks: AckResult) -> str:
    """The rejections of a TA1/999 without the IK404 bad values (which may quote PHI)."""
    out = [str(a) for a in acks.interchanges if not a.accepted]
    for group in acks.groups:
        for tx in group.transactions:
            if tx.accepted:
                continue
            where = "; ".join(
                f"{e.segment_id} at {e.position}"
                + "".join(f" {el.label(e.segment_id)} {el.code.code}" for el in e.elements)
                for e in tx.segment_errors
            )
            codes = ", ".join(str(c) for c in tx.codes)
            out.append(
                f"999 {tx.transaction_set} {tx.status.code}: {codes}"
                + (f" ({where})" if where else "")
            )
        if not group.accepted and not group.transactions:
            out.append(f"999 group {group.status.code}: " + ", ".join(str(c) for c in group.codes))
    return "; ".join(out)


def check_answer(x12: str) -> str:
    """``x12`` unchanged when it holds a 271; else the TA1/999 it holds, as an error.

    A rejecting TA1/999 raises :class:`PayerRejected` when it asks for a correction (TA105 or
    IK5/AK9 codes other than a duplicate control number or a truncated transmission) and
    :class:`PayerUnavailable` when sending again may work; an answer that is not X12, or
    acknowledges without a 271, raises :class:`PayerUnavailable`.
    """
    try:
        interchanges = parse_interchanges(x12, strict=False)
    except X12Error as exc:
        raise PayerUnavailable(f"the payer's answer is not X12 ({exc.where or 'ISA'})") from exc
    if any(tx.id == "271" for ic in interchanges for tx in ic.transactions()):
        return x12
    try:
        acks = AckResult()
        for ic in interchanges:
            one = read_acks(ic)
            acks.interchanges += one.interchanges
            acks.groups += one.groups
    except X12Error as exc:
        raise PayerUnavailable(
            f"the payer's answer is neither a 271 nor a TA1/999 ({exc.where or 'ST'})"
        ) from exc
    if acks.accepted:
        raise PayerUnavailable("the payer acknowledged the 270 without a 271")
    reasons = _ack_reasons(acks) or "rejected"
    if acks.action == "retry":
        raise PayerUnavailable(f"the payer asks to send again: {reasons}")
    raise PayerRejected(f"the payer rejected the 270: {reasons}")
