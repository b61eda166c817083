"""TA1 and 999 acknowledgments: accepted or rejected, why, and whether to retry or fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.x12.ack import read_acks
from engine.x12.errors import X12Error

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "x12"


def test_ta1_duplicate_control_number_is_retryable() -> None:
    result = read_acks((FIXTURES / "ta1_duplicate.x12").read_text())
    (ta1,) = result.interchanges
    assert (ta1.control_number, ta1.status.code, ta1.note.code) == ("000000042", "R", "025")
    assert not result.accepted and result.action == "retry"
    assert result.reasons == [
        "TA1: interchange 000000042 rejected: 025 Duplicate Interchange Control Number"
    ]


def test_ta1_invalid_sender_needs_fixing() -> None:
    result = read_acks((FIXTURES / "ta1_rejected.x12").read_text())
    assert result.action == "fix"
    assert result.reasons == [
        "TA1: interchange 000000044 rejected: 006 Invalid Interchange Sender ID"
    ]


def test_999_partially_accepted_names_segments_and_elements() -> None:
    result = read_acks((FIXTURES / "999_partially_accepted.x12").read_text())
    (group,) = result.groups
    assert (group.functional_id, group.control_number, group.status.code) == ("HS", "42", "P")
    assert (group.included, group.received, group.accepted_count) == (2, 2, 1)
    rejected, accepted = group.transactions
    assert accepted.accepted and accepted.control_number == "0002"
    assert not rejected.accepted and [str(c) for c in rejected.codes] == [
        "5 One or More Segments in Error"
    ]
    nm1, dmg = rejected.segment_errors
    assert (nm1.segment_id, nm1.position, nm1.loop, nm1.code and nm1.code.code) == (
        "NM1",
        9,
        "2100C",
        "8",
    )
    assert nm1.context == ("CLM01:TRC-0001",)
    (element,) = nm1.elements
    assert (element.position, element.reference, element.code.code, element.bad_value) == (
        9,
        "67",
        "7",
        "XYZ",
    )
    assert dmg.elements[0].code.meaning == "Invalid Date"
    assert not result.accepted and result.action == "fix"
    assert result.reasons == [
        "999: group HS 42 P Partially Accepted, At Least One Transaction Set Was Rejected "
        "(1 of 2 transaction sets accepted)",
        "999: transaction 270 0001 rejected: 5 One or More Segments in Error; segment NM1 at "
        "position 9 (loop 2100C): 8 Segment Has Data Element Errors; NM109 (data element 67): "
        "7 Invalid Code Value, value 'XYZ'; segment DMG at position 10 (loop 2100C): 8 Segment "
        "Has Data Element Errors; DMG02 (data element 1251): 8 Invalid Date, value '19801345'",
    ]


def test_999_accepted() -> None:
    result = read_acks((FIXTURES / "999_accepted.x12").read_text())
    assert result.accepted and result.action == "none" and result.reasons == []
    assert result.groups[0].transactions[0].control_number == "0001"


def test_not_an_acknowledgment() -> None:
    with pytest.raises(X12Error, match="ST01 '271' is not 999"):
        read_acks((FIXTURES / "271_inactive.x12").read_text())
