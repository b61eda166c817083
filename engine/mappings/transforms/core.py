"""The transforms every area uses: dates and times, identifier systems, numbers, yes/no, text,
phone numbers, street addresses and locations.

Dates and times (HL7 v2.5.1 chapter 2A, DTM; FHIR R4 §2.24 date, dateTime, instant):

* precision is kept: ``1980`` → ``1980``, ``198001`` → ``1980-01``, ``19800115`` → ``1980-01-15``;
* a time without an offset gets the sending facility's configured time zone (``site.yaml``);
* ``instant`` (Appointment.start) needs seconds and an offset; missing seconds are ``:00``.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.errors import ConfigError
from engine.mappings.transforms.contract import Transform, TransformContext

__all__ = ["TRANSFORMS"]


# -- dates and times -------------------------------------------------------------------------

_DTM_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {name!r} (use an IANA name like America/Chicago)"
        ) from exc


def _offset_for(y: int, mo: int, d: int, h: int, mi: int, s: int, tz: str) -> str:
    off = datetime(y, mo, d, h, mi, s, tzinfo=_zone(tz)).utcoffset()
    assert off is not None
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


#: days in each month of a common year (index 1-12)
_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _parse_dtm(text: str) -> tuple[str, ...] | None:
    """The parts of an HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]), checked.

    An empty text (or the explicit null ``""``) is no value. Anything else that is not a date
    that exists (month 13, 31 April, hour 25, an offset past 14 hours) raises ``ValueError``
    naming the part that is wrong, never its digits (the value may be a birth date, and the
    reason goes into the NAK and the stored message): the compiled mapping turns it into an
    error naming the field. HL7 v2.5.1 section 2A.22.
    """
    text = text.strip()
    if not text or text == '""':
        return None
    m = _DTM_RE.match(text)
    if not m:
        raise ValueError(
            f"not a date/time (HL7 DTM is YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ], got {len(text)} "
            "characters that are not)"
        )
    g = tuple(m.groups(default=""))
    y, mo, d, h, mi, s, _frac, off = g
    if mo and not 1 <= int(mo) <= 12:
        raise ValueError("the month does not exist (DTM: YYYYMMDD...)")
    if d:
        month, year = int(mo), int(y)
        last = _DAYS[month] if month != 2 or not calendar.isleap(year) else 29
        if not 1 <= int(d) <= last:
            raise ValueError("the day does not exist in its month (DTM: YYYYMMDD...)")
    if h and int(h) > 23:
        raise ValueError("the hour does not exist (DTM: ...HHMM, 00-23)")
    if mi and int(mi) > 59:
        raise ValueError("the minute does not exist (DTM: ...HHMM, 00-59)")
    if s and int(s) > 59:
        raise ValueError("the second does not exist (DTM: ...HHMMSS, 00-59)")
    if off and (int(off[1:3]) > 14 or int(off[3:]) > 59):
        raise ValueError("the time zone offset does not exist (+/-ZZZZ, at most 14 hours)")
    return g


def _date_in(parts: list[str], ctx: TransformContext) -> str | None:
    g = _parse_dtm(parts[0]) if parts and parts[0] else None
    if g is None:
        return None
    y, mo, d = g[0], g[1], g[2]
    return "-".join(p for p in (y, mo, d if mo else "") if p)


def _date_out(value: Any, ctx: TransformContext) -> list[str]:
    return [str(value).replace("-", "")[:8]] if value else []


def _datetime_in(parts: list[str], ctx: TransformContext, *, instant: bool = False) -> str | None:
    g = _parse_dtm(parts[0]) if parts and parts[0] else None
    if g is None:
        return None
    y, mo, d, h, mi, s, frac, off = g
    if not h:
        if instant and mo and d:
            h, mi, s = "00", "00", "00"
        else:
            return "-".join(p for p in (y, mo, d if mo else "") if p)
    mi = mi or "00"
    if instant or s or True:  # FHIR dateTime with a time needs seconds
        s = s or "00"
    if off:
        tz = f"{off[:3]}:{off[3:]}"
    else:
        tz = _offset_for(int(y), int(mo), int(d), int(h), int(mi), int(s), ctx.timezone)
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}{frac}{tz}"


def _datetime_out(value: Any, ctx: TransformContext) -> list[str]:
    if not value:
        return []
    text = str(value)
    m = re.match(
        r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?"
        r"(Z|[+-]\d{2}:\d{2})?$",
        text,
    )
    if not m:
        return [text]
    y, mo, d, h, mi, s, frac, tz = m.groups(default="")
    out = y + mo + d + h + mi + s + (frac[:5] if frac else "")
    if tz:
        out += "+0000" if tz == "Z" else tz.replace(":", "")
    return [out]


# -- identifiers -----------------------------------------------------------------------------

_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def _system_in(parts: list[str], ctx: TransformContext) -> str | None:
    """HD (namespace & universal ID & universal ID type) → an identifier system URI.

    Order: the site's ``identifier_systems`` for the namespace; an ISO OID as ``urn:oid:``; a URI
    universal ID as it is; else ``identifier_system_base`` + namespace.
    """
    ns = parts[0] if parts else ""
    uid = parts[1] if len(parts) > 1 else ""
    uid_type = parts[2] if len(parts) > 2 else ""
    mapped = ctx.system_for(ns) if ns else None
    if mapped is None and uid:
        mapped = ctx.system_for(uid)
    if mapped:
        return mapped
    if uid and (uid_type == "ISO" or _OID_RE.match(uid)):
        return f"urn:oid:{uid}"
    if uid and uid_type in ("URI", "URL") or uid.startswith(("http://", "https://", "urn:")):
        return uid
    if ns:
        return ctx.identifier_system_base + ns
    return None


def _system_out(value: Any, ctx: TransformContext) -> list[str]:
    if not value:
        return []
    text = str(value)
    for ns, uri in ctx.identifier_systems:
        if uri == text:
            return [ns]
    if text.startswith("urn:oid:"):
        return ["", text[8:], "ISO"]
    if text.startswith(ctx.identifier_system_base):
        return [text[len(ctx.identifier_system_base) :]]
    return ["", text, "URI"]


# -- numbers, booleans, money ----------------------------------------------------------------


def _decimal_in(parts: list[str], ctx: TransformContext) -> float | int | None:
    text = parts[0].strip() if parts else ""
    if not text:
        return None
    try:
        d = Decimal(text)
    except InvalidOperation:
        return None  # not a number: the field is then reported as not mapped
    if not d.is_finite():
        return None
    return int(d) if d == d.to_integral_value() and "." not in text else float(d)


def _decimal_out(value: Any, ctx: TransformContext) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, float) and value.is_integer():
        return [f"{value:.2f}"]
    return [str(value)]


def _int_in(parts: list[str], ctx: TransformContext) -> int | None:
    text = parts[0].strip() if parts else ""
    return int(text) if text.isdigit() else None


def _str_out(value: Any, ctx: TransformContext) -> list[str]:
    return [] if value is None else [str(value)]


def _yn_in(parts: list[str], ctx: TransformContext) -> bool | None:
    text = parts[0].upper() if parts else ""
    return True if text == "Y" else False if text == "N" else None


def _yn_out(value: Any, ctx: TransformContext) -> list[str]:
    return [] if value is None else ["Y" if value else "N"]


def _text_in(parts: list[str], ctx: TransformContext) -> str | None:
    return parts[0] if parts and parts[0] else None


def _phone_in(parts: list[str], ctx: TransformContext) -> str | None:
    """XTN → ContactPoint.value for a phone: XTN-1 when sent (the formatted number), else XTN-12
    (unformatted), else composed from country (5), area (6), local number (7) and extension (8),
    as the HL7 v2-to-FHIR IG's XTN map does."""

    def part(i: int) -> str:
        return parts[i - 1] if len(parts) >= i else ""

    if part(1):
        return part(1)
    if part(12):
        return part(12)
    if not part(7):
        return None
    text = " ".join(p for p in (f"+{part(5)}" if part(5) else "", part(6), part(7)) if p)
    return f"{text} X{part(8)}" if part(8) else text


def _phone_out(value: Any, ctx: TransformContext) -> list[str]:
    return [] if not value else [str(value)]


def _street_in(parts: list[str], ctx: TransformContext) -> str | None:
    """SAD (street address & street name & dwelling number) → one address line. A sender that
    splits the street (``1000&Hospital Lane``) gets "1000 Hospital Lane"; one that sends it whole
    in SAD-1 keeps it as it is."""
    first = parts[0] if parts else ""
    rest = [p for p in parts[1:3] if p and p not in first]
    return " ".join([first, *rest]).strip() or None


def _location_in(parts: list[str], ctx: TransformContext) -> str | None:
    """PL → Location.name: point of care (1), room (2) and bed (3) joined by spaces."""
    text = " ".join(p for p in parts[:3] if p)
    return text or None


def _location_out(value: Any, ctx: TransformContext) -> list[str]:
    """A Location's name is one PL component (PL-1): never split on its spaces."""
    return [str(value)] if value else []


#: ``single``: reads only the element's text, so generated code skips building the parts list
TRANSFORMS: list[Transform] = [
    Transform(
        "date",
        "DT/DTM → FHIR date, keeping precision (YYYY, YYYY-MM, YYYY-MM-DD)",
        _date_in,
        _date_out,
        single=True,
    ),
    Transform(
        "datetime",
        "DTM → FHIR dateTime, keeping precision; offset from the "
        "message or the facility's time zone",
        _datetime_in,
        _datetime_out,
        single=True,
    ),
    Transform(
        "instant",
        "DTM → FHIR instant (seconds and offset always present)",
        lambda p, c: _datetime_in(p, c, instant=True),
        _datetime_out,
        single=True,
    ),
    Transform(
        "identifier_system",
        "HD → identifier system URI (site map, urn:oid:, URI, or the site's base + namespace)",
        _system_in,
        _system_out,
    ),
    Transform(
        "ei_system",
        "EI (entity ID ^ namespace ^ universal ID ^ type) → identifier "
        "system URI, read from components 2-4",
        lambda p, c: _system_in(p[1:4], c),
        lambda v, c: ["", *_system_out(v, c)],
    ),
    Transform("decimal", "NM → JSON number", _decimal_in, _decimal_out, single=True),
    Transform("integer", "NM/SI → integer", _int_in, _str_out, single=True),
    Transform("yes_no", "ID Y/N (table 0136) → boolean", _yn_in, _yn_out, single=True),
    Transform("text", "the text as it is (the default)", _text_in, _str_out),
    Transform("street_address", "SAD → address line (street parts joined)", _street_in, _phone_out),
    Transform(
        "location_name",
        "PL → Location.name: point of care, room, bed",
        _location_in,
        _location_out,
    ),
    Transform(
        "phone",
        "XTN → ContactPoint.value: XTN-1, else XTN-12, else +5 6 7 X8",
        _phone_in,
        _phone_out,
    ),
]
