"""The X12 branch of the engine's error tree (engine/errors.py)::

    EngineError
    └── X12Error        an X12 interchange we cannot read or build (segment, position, element)

An ``X12Error`` says where the fault is: the segment ID, its position (segment number in the
interchange, ISA = 1, the number an editor shows once segments are put on their own lines) and
the element position (``SE01`` is element 1 of SE). ``ack_code`` is the code an acknowledgment
would carry for the fault, when X12 has one: a TA105 interchange note code (``"001"``) for
envelope faults, an IK502 transaction set syntax error code (``"4"``) for transaction faults,
an AK905 functional group syntax error code for group faults; ``ack_level`` names which of the
three (``"TA1"``, ``"IK5"``, ``"AK9"``).
"""

from __future__ import annotations

from engine.errors import EngineError

__all__ = ["X12Error"]


class X12Error(EngineError):
    """An X12 interchange is malformed, or data cannot be written as X12.

    Reads ``segment 14 (SE): SE01 says 12 segments, the transaction has 13``.
    """

    code = "100"  # HL7 table 0357 "segment sequence error": the closest code for a bad structure

    def __init__(
        self,
        message: str,
        *,
        segment_id: str | None = None,
        position: int | None = None,
        element: int | None = None,
        ack_code: str | None = None,
        ack_level: str | None = None,
    ) -> None:
        self.segment_id = segment_id
        self.position = position
        self.element = element
        self.ack_code = ack_code
        self.ack_level = ack_level
        if position is not None:
            where: str | None = f"segment {position}" + (f" ({segment_id})" if segment_id else "")
        else:
            where = segment_id
        super().__init__(message, where=where)
