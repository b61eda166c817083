"""The stub FHIR server's search parameters (engine/sim/fhir_server.py): what a search and a
conditional update's URL may ask (https://hl7.org/fhir/R4/search.html), and the error they answer.

``identifier``; ``date`` (an Appointment's ``start``, compared by day, with the prefixes eq, ge,
le, gt, lt); the references ``patient`` and ``beneficiary`` (a Coverage's beneficiary, an
Appointment's participant) and ``payor`` (a Coverage's payer), each ``Type/id`` or a bare id;
``status``. Others (``_count``, ``_include``...) do not filter.

In a transaction a conditional URL may name another entry by its ``fullUrl``
(``Coverage?identifier=M1&beneficiary=urn:uuid:..``): :func:`resolve_placeholders` puts in the
``Type/id`` that entry was given (an entry before it in the Bundle; the engine's Bundles list a
resource before those that name it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from typing import Any

from engine.sim.fhir_index import has_identifier

__all__ = ["Problem", "matches", "resolve_placeholders"]


class Problem(Exception):
    """An HTTP error with an OperationOutcome (issue code, text)."""

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text


#: the date search prefixes the stub knows (https://hl7.org/fhir/R4/search.html#prefix)
_DATE_TESTS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda have, want: have == want,
    "ge": lambda have, want: have >= want,
    "le": lambda have, want: have <= want,
    "gt": lambda have, want: have > want,
    "lt": lambda have, want: have < want,
}


def _one(value: Any) -> list[str]:
    return [(value or {}).get("reference", "")]


def _each(values: Any) -> list[str]:
    return [(v or {}).get("reference", "") for v in values or []]


#: reference search parameters: (resource type, parameter) -> (the type of a bare id, the
#: references the resource holds there)
_REFERENCES: dict[tuple[str, str], tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    ("Coverage", "patient"): ("Patient", lambda r: _one(r.get("beneficiary"))),
    ("Coverage", "beneficiary"): ("Patient", lambda r: _one(r.get("beneficiary"))),
    ("Coverage", "payor"): ("Organization", lambda r: _each(r.get("payor"))),
    ("Appointment", "patient"): (
        "Patient",
        lambda r: _each([p.get("actor") for p in r.get("participant") or []]),
    ),
}


def matches(resource: dict[str, Any], params: Mapping[str, list[str]]) -> bool:
    """Whether a resource passes every search parameter the stub knows (the module's list)."""
    rtype = resource.get("resourceType", "")
    for name, values in params.items():
        for value in values:
            if name == "identifier":
                if not has_identifier(resource, value):
                    return False
            elif name == "date":
                prefix, day = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
                test = _DATE_TESTS.get(prefix)
                if test is None or len(day) < 10:
                    raise Problem(400, "invalid", f"date search {value!r} is not understood")
                if not test(str(resource.get("start", ""))[:10], day[:10]):
                    return False
            elif name == "status":
                if resource.get("status") not in value.split(","):
                    return False
            elif (rtype, name) in _REFERENCES:
                bare_type, held = _REFERENCES[(rtype, name)]
                want = value if "/" in value else f"{bare_type}/{value}"
                if want not in held(resource):
                    return False
    return True


def resolve_placeholders(
    params: Mapping[str, list[str]], resolved: Mapping[str, str], fulls: Set[str]
) -> dict[str, list[str]]:
    """The parameters with each value that is an entry's ``fullUrl`` (``fulls``, the
    transaction's) replaced by the ``Type/id`` that entry was given; ``identifier`` is data and
    left alone. One naming an entry not planned yet (later in the Bundle) is refused (400)."""
    out: dict[str, list[str]] = {}
    for name, values in params.items():
        new = []
        for value in values:
            if name != "identifier" and value in fulls:
                if value not in resolved:
                    raise Problem(
                        400, "not-supported", f"{name}={value} names a later entry of the Bundle"
                    )
                value = resolved[value]
            new.append(value)
        out[name] = new
    return out
