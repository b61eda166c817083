"""Acknowledging what we received: a 999 (005010X231A1) per functional group, and a TA1.

:func:`acknowledge` answers an interchange read with ``strict=False``: everything in it was
taken, and the envelope faults the read tolerated (``Interchange.faults``) are *noted*, not
rejected. What each fault becomes, per the 999 guide (005010X231A1) and X12.5 for the TA1::

    fault                                  where it goes                 code
    SE01 count wrong                       IK501 E, IK502                4  included segments
    SE02 does not match ST02               IK501 E, IK502                3  control numbers differ
    GE01 count wrong                       AK901 E, AK905                5  included sets
    GE02 does not match GS06               AK901 E, AK905                4  control numbers differ
    GS06 not a number                      AK901 E, AK905                6  control number syntax
    IEA01 count wrong                      TA104 E, TA105              021  included groups
    IEA02 does not match ISA13             TA104 E, TA105              001  control numbers differ

A count or control-number fault is about the trailer, not a data segment, so it is reported by
its transaction-set (IK502) or group (AK905) syntax error code alone, without IK3/IK4 (those name
a segment or element of the set that is in error). IK5/AK9 carry up to five codes each (IK502-
IK506, AK905-AK909). AK902 is the received GE01 (the count the sender claimed), AK903 the sets
actually received, AK904 those accepted: all of them, as ``E`` is an acceptance.

The TA1 goes first in the interchange (ISA, TA1, GS ... GE, IEA) when the sender asked for one
(ISA14 1) or an interchange-level fault was noted; TA105 holds one note code, the first fault's.

Incomplete: faults in the content (an unreadable date, an unknown code) are not found here; the
reader refuses those. One 999 per group, as the guide requires (AK1 once per 999).
"""

from __future__ import annotations

from datetime import datetime

from engine.x12.envelope import FunctionalGroup, Interchange, SegmentData, build_interchange
from engine.x12.errors import X12Error
from engine.x12.segments import DEFAULT_DELIMITERS, Delimiters, Element, format_segment

__all__ = ["ACK_CONVENTION", "acknowledge"]

#: GS08/ST03 of a 999
ACK_CONVENTION = "005010X231A1"
_MAX_CODES = 5


def _codes(faults: list[X12Error]) -> list[str]:
    out: list[str] = []
    for fault in faults:
        if fault.ack_code and fault.ack_code not in out:
            out.append(fault.ack_code)
    return out[:_MAX_CODES]


def _faults_by_level(interchange: Interchange) -> dict[str, list[X12Error]]:
    """The tolerated faults by where they are answered: TA1, AK9 (group) or IK5 (set)."""
    by_level: dict[str, list[X12Error]] = {"TA1": [], "AK9": [], "IK5": []}
    for fault in interchange.faults:
        by_level.setdefault(fault.ack_level or "IK5", []).append(fault)
    return by_level


def _group_999(
    group: FunctionalGroup, group_faults: list[X12Error], set_faults: list[X12Error]
) -> list[SegmentData]:
    """The body of the 999 for one group: AK1, an AK2/IK5 pair per transaction set, AK9."""
    body: list[SegmentData] = [("AK1", [group.functional_id, group.control_number, group.version])]
    noted = False
    for tx in group.transactions:
        tx_faults = [f for f in set_faults if f.position == tx.se.position]
        noted = noted or bool(tx_faults)
        body.append(("AK2", [tx.id, tx.control_number, tx.convention]))
        body.append(("IK5", ["E" if tx_faults else "A", *_codes(tx_faults)]))
    received = len(group.transactions)
    claimed = group.ge.get(1) if group.ge.get(1).isdigit() else str(received)
    status = "E" if group_faults or noted else "A"
    ak9: list[Element] = [status, str(int(claimed)), str(received), str(received)]
    body.append(("AK9", [*ak9, *_codes(group_faults)]))
    return body


def _ta1(interchange: Interchange, ta1_faults: list[X12Error], delimiters: Delimiters) -> str:
    """The TA1 answering the interchange: TA104 E with the first fault's TA105 note, else A."""
    return format_segment(
        "TA1",
        [
            interchange.control_number,
            interchange.date,
            interchange.time,
            "E" if ta1_faults else "A",
            (ta1_faults[0].ack_code or "000") if ta1_faults else "000",
        ],
        delimiters,
    )


def acknowledge(
    interchange: Interchange,
    *,
    sender_id: str,
    receiver_id: str,
    control_number: int,
    now: datetime,
    sender_qualifier: str = "ZZ",
    receiver_qualifier: str = "ZZ",
    delimiters: Delimiters = DEFAULT_DELIMITERS,
) -> str:
    """The 999 interchange (and TA1) acknowledging ``interchange``, faults noted as ``E``.

    ``sender_id``/``receiver_id`` are ours and the original sender's (ISA06/ISA08, GS02/GS03).
    ISA15 repeats the received one. Raises :class:`X12Error` for an interchange with neither a
    group nor a TA1 to write (nothing to acknowledge).
    """
    by_level = _faults_by_level(interchange)
    bodies: list[list[SegmentData]] = []
    for group in interchange.groups:
        positions = {group.gs.position, group.ge.position}
        group_faults = [f for f in by_level["AK9"] if f.position in positions]
        bodies.append(_group_999(group, group_faults, by_level["IK5"]))
    ta1_faults = by_level["TA1"]
    if not bodies and not (ta1_faults or interchange.ack_requested):
        raise X12Error(
            "the interchange holds no functional group to acknowledge",
            segment_id="IEA",
            position=interchange.iea.position,
        )
    usage = interchange.usage if interchange.usage in ("P", "T") else "P"
    text = build_interchange(
        bodies,
        transaction_set="999",
        convention=ACK_CONVENTION,
        functional_id="FA",
        sender_id=sender_id,
        receiver_id=receiver_id,
        control_number=control_number,
        now=now,
        sender_qualifier=sender_qualifier,
        receiver_qualifier=receiver_qualifier,
        usage=usage,
        delimiters=delimiters,
    )
    if not bodies:  # a TA1 alone: build_interchange wrote an empty group around no sets
        text = text[: text.index(delimiters.segment) + 1] + format_segment(
            "IEA", ["0", f"{control_number:09d}"], delimiters
        )
    if ta1_faults or interchange.ack_requested:
        isa_end = text.index(delimiters.segment) + 1
        text = text[:isa_end] + _ta1(interchange, ta1_faults, delimiters) + text[isa_end:]
    return text
