"""Transforms for the scheduling mappings (collected by name in :mod:`engine.mappings.transforms`).

Appointment durations (FHIR R4 Appointment.minutesDuration, a positiveInt) come from an HL7 number
whose unit is in *another* field: SCH-9 with SCH-10, AIS-7 with AIS-8 (HL7 v2.5.1 §10.6.2,
§10.6.4; units are ISO+/ANSI+/UCUM codes such as ``min``, ``s``, ``h``). A transform sees one field,
so the mapping file picks the transform by the unit (a rule's ``when`` on the unit field) and the
transform only scales the number:

* ``minutes``: the number is in minutes;
* ``seconds_as_minutes``: the number is in seconds (``60`` → ``1``);
* ``hours_as_minutes``: the number is in hours (``1.5`` → ``90``).

A duration that is not a whole, positive number of minutes is left out rather than rounded: a
scheduler that sends ``90 s`` means something ``minutesDuration`` cannot say.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.mappings.transforms.contract import Transform, TransformContext

__all__ = ["TRANSFORMS"]


def _number(parts: list[str]) -> Decimal | None:
    text = parts[0].strip() if parts else ""
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _whole_minutes(value: Decimal | None) -> int | None:
    if value is None or value <= 0 or value != value.to_integral_value():
        return None
    return int(value)


def _minutes_in(parts: list[str], ctx: TransformContext) -> int | None:
    return _whole_minutes(_number(parts))


def _seconds_in(parts: list[str], ctx: TransformContext) -> int | None:
    value = _number(parts)
    return _whole_minutes(value / 60 if value is not None else None)


def _hours_in(parts: list[str], ctx: TransformContext) -> int | None:
    value = _number(parts)
    return _whole_minutes(value * 60 if value is not None else None)


def _scaled_out(
    per_minute: int = 1, per_unit: int = 1
) -> Callable[[Any, TransformContext], list[str]]:
    """FHIR minutes → the HL7 number in the rule's unit (minutes x per_minute / per_unit)."""

    def out(value: Any, ctx: TransformContext) -> list[str]:
        if value is None or value == "":
            return []
        number = (Decimal(str(value)) * per_minute / per_unit).normalize()
        return [f"{number:f}"]

    return out


TRANSFORMS: list[Transform] = [
    Transform(
        "minutes",
        "NM in minutes → positiveInt minutes (left out unless whole and positive)",
        _minutes_in,
        _scaled_out(),
    ),
    Transform(
        "seconds_as_minutes",
        "NM in seconds → positiveInt minutes (left out unless a whole number of minutes)",
        _seconds_in,
        _scaled_out(per_minute=60),
    ),
    Transform(
        "hours_as_minutes",
        "NM in hours → positiveInt minutes (left out unless a whole number of minutes)",
        _hours_in,
        _scaled_out(per_unit=60),
    ),
]
