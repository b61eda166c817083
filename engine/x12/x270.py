"""The 270 eligibility inquiry (005010X279A1): build one from an :class:`EligibilityInquiry`, and
read one back (for tests, conformance and trading-partner replays).

What :func:`build_270` writes, loop by loop::

    ST*270*0001*005010X279A1               BHT*0022*13*<trace>*CCYYMMDD*HHMM
    2000A  HL*1**20*1                      information source (the payer)
    2100A    NM1*PR*2*<payer name>*****PI*<payer id>
    2000B  HL*2*1*21*1                     information receiver (the provider asking)
    2100B    NM1*1P*2*<organization>*****XX*<NPI>      (NM102 1 with last/first for a person)
    2000C  HL*3*2*22*0|1                   subscriber (HL04 1 when a dependent follows)
             TRN*1*<trace number>*<originator id>    (at the patient's level: 2000C or 2000D)
    2100C    NM1*IL*1*<last>*<first>*<middle>**<suffix>*MI*<member id>
             N3, N4 (address, optional) DMG*D8*<birth date>*<F|M>  DTP*291*D8|RD8*<service date>
    2110C    EQ*30^...                     service types (EQ01 repeats), default 30
    2000D  HL*4*3*23*0                     dependent, when the patient is not the subscriber
    2100D    NM1*03*1*<last>*<first>...  N3, N4, DMG, DTP*291;  2110D EQ

Names and addresses go through :func:`engine.x12.charset.to_basic` (upper case, accents removed,
``O'Connor-Núñez`` → ``OCONNOR-NUNEZ``) and are cut to the element's maximum (NM103 60, NM104 35,
NM105 25, NM107 10, N301/N302 55, N401 30). Identifiers are checked, never rewritten; an NPI
(NM108 ``XX``) must have ten digits and a valid check digit (the Luhn formula over ``80840`` and
its first nine digits). DMG03 is written only for F and M (the guide's gender codes for a known
gender). When the service date is omitted the payer answers for its processing date (IG 2100C DTP).

As the IG says for loop 2000D, a dependent with a member ID of their own is the subscriber:
put them in ``subscriber`` and leave ``dependent`` empty.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime

from engine.x12.charset import check_identifier, to_basic
from engine.x12.envelope import Interchange, SegmentData, build_interchange, parse_interchange
from engine.x12.errors import X12Error
from engine.x12.loops import Level, hierarchy
from engine.x12.segments import Element, Segment

__all__ = [
    "CONVENTION",
    "Address",
    "EligibilityInquiry",
    "Payer",
    "Person",
    "Provider",
    "build_270",
    "npi_is_valid",
    "normalize_inquiry",
    "read_270",
]

#: GS08 and ST03 of what we build
CONVENTION = "005010X279A1"


@dataclass(frozen=True)
class Address:
    """N3 (street lines) and N4 (city, state, postal code, country when not US)."""

    line1: str
    line2: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass(frozen=True)
class Payer:
    """2100A: the information source. ``id_qualifier`` PI (payor identification) or XV (CMS
    plan ID)."""

    name: str
    payer_id: str
    id_qualifier: str = "PI"


@dataclass(frozen=True)
class Provider:
    """2100B: the information receiver, an organization (``organization``) or a person
    (``last_name``/``first_name``). ``npi`` is NM109: the NPI when ``id_qualifier`` is XX (what
    we write); a 270 read from elsewhere may carry another identifier (SV service provider
    number)."""

    npi: str
    organization: str = ""
    last_name: str = ""
    first_name: str = ""
    id_qualifier: str = "XX"


@dataclass(frozen=True)
class Person:
    """2100C subscriber or 2100D dependent. ``gender`` is DMG03: ``F``, ``M`` or empty."""

    last_name: str = ""
    first_name: str = ""
    middle_name: str = ""
    suffix: str = ""
    member_id: str = ""
    birth_date: date | None = None
    gender: str = ""
    address: Address | None = None


@dataclass(frozen=True)
class EligibilityInquiry:
    """One patient's eligibility question to one payer.

    ``trace_number`` (TRN02) comes back in the 271 (TRN01 = 2) so the answer can be matched to
    the question; ``originator_id`` (TRN03) is ``1`` followed by the asker's EIN, or another
    10-character identifier agreed with the payer. ``service_date_end`` makes the DTP a range
    (RD8).
    """

    payer: Payer
    provider: Provider
    subscriber: Person
    trace_number: str
    originator_id: str
    dependent: Person | None = None
    service_date: date | None = None
    service_date_end: date | None = None
    service_types: tuple[str, ...] = ("30",)


def npi_is_valid(npi: str) -> bool:
    """Ten digits whose last is the Luhn check digit of ``80840`` + the first nine (CMS NPI
    check digit standard)."""
    if len(npi) != 10 or not npi.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed("80840" + npi[:9])):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10 == int(npi[9])


# -- building ------------------------------------------------------------------------------------


def _name(value: str, max_length: int) -> str:
    return to_basic(value, kind="name", max_length=max_length)


def _text(value: str, max_length: int) -> str:
    return to_basic(value, kind="text", max_length=max_length)


def _d8(value: date) -> str:
    return value.strftime("%Y%m%d")


def _address(address: Address) -> list[SegmentData]:
    line1 = _text(address.line1, 55)
    if not line1:
        raise X12Error("address line 1 is empty after transliteration (N301)", segment_id="N3")
    n3: list[Element] = [line1, _text(address.line2, 55)]
    postal = "".join(ch for ch in address.postal_code.upper() if ch.isascii() and ch.isalnum())
    country = _name(address.country, 3).replace(" ", "")
    n4: list[Element] = [
        _text(address.city, 30),
        _name(address.state, 2).replace(" ", "") if not country or country == "US" else "",
        postal[:15],
        country if country not in ("", "US", "USA") else "",
    ]
    return [("N3", n3), ("N4", n4)]


def _person_segments(person: Person) -> list[SegmentData]:
    out: list[SegmentData] = []
    if person.address is not None:
        out.extend(_address(person.address))
    if person.birth_date is not None:
        gender = person.gender if person.gender in ("F", "M") else ""
        out.append(("DMG", ["D8", _d8(person.birth_date), gender]))
    return out


def _patient_tail(inquiry: EligibilityInquiry) -> list[SegmentData]:
    out: list[SegmentData] = []
    if inquiry.service_date is not None:
        if inquiry.service_date_end is not None:
            when = f"{_d8(inquiry.service_date)}-{_d8(inquiry.service_date_end)}"
            out.append(("DTP", ["291", "RD8", when]))
        else:
            out.append(("DTP", ["291", "D8", _d8(inquiry.service_date)]))
    types = list(inquiry.service_types) or ["30"]
    for code in types:
        check_identifier(code, "service type code", segment_id="EQ", element=1, max_length=2)
    out.append(("EQ", [types]))
    return out


def _information_source(payer: Payer) -> list[SegmentData]:
    """Loop 2000A/2100A: HL*1**20*1 and the payer's NM1*PR."""
    payer_name = _text(payer.name, 60)
    if not payer_name:
        raise X12Error("the payer name is empty (NM103, loop 2100A)", segment_id="NM1", element=3)
    payer_id = check_identifier(
        payer.payer_id, "payer ID", segment_id="NM1", element=9, min_length=2, max_length=80
    )
    return [
        ("HL", ["1", "", "20", "1"]),
        ("NM1", ["PR", "2", payer_name, "", "", "", "", payer.id_qualifier, payer_id]),
    ]


def _information_receiver(provider: Provider) -> list[SegmentData]:
    """Loop 2000B/2100B: HL*2*1*21*1 and the provider's NM1*1P (an organization or a person),
    its NPI checked when NM108 is XX."""
    npi = check_identifier(
        provider.npi, "provider ID", segment_id="NM1", element=9, min_length=2, max_length=80
    )
    if provider.id_qualifier == "XX" and not npi_is_valid(npi):
        raise X12Error(
            f"NPI {npi!r} is not ten digits with a valid check digit (NM109, loop 2100B)",
            segment_id="NM1",
            element=9,
        )
    if provider.organization:
        nm1: list[Element] = ["1P", "2", _text(provider.organization, 60), "", "", "", ""]
    else:
        last = _name(provider.last_name, 60)
        if not last:
            raise X12Error(
                "the provider has neither an organization nor a last name (NM103, loop 2100B)",
                segment_id="NM1",
                element=3,
            )
        nm1 = ["1P", "1", last, _name(provider.first_name, 35), "", "", ""]
    return [("HL", ["2", "1", "21", "1"]), ("NM1", [*nm1, provider.id_qualifier, npi])]


def _trace(inquiry: EligibilityInquiry) -> tuple[str, str]:
    """TRN02 (the trace number, also BHT03) and TRN03 (the originator, 10 characters)."""
    trace = check_identifier(
        inquiry.trace_number, "trace number", segment_id="TRN", element=2, max_length=50
    )
    originator = check_identifier(
        inquiry.originator_id,
        "originator ID",
        segment_id="TRN",
        element=3,
        min_length=10,
        max_length=10,
    )
    return trace, originator


def _subscriber(sub: Person, trn: SegmentData | None, has_dependent: bool) -> list[SegmentData]:
    """Loop 2000C/2100C: HL*3*2*22, the TRN when the subscriber is the patient, NM1*IL (the
    member ID, or a name and birth date to search by), N3/N4 and DMG."""
    member_id = (
        check_identifier(
            sub.member_id, "member ID", segment_id="NM1", element=9, min_length=2, max_length=80
        )
        if sub.member_id
        else ""
    )
    last, first = _name(sub.last_name, 60), _name(sub.first_name, 35)
    if not member_id and not (last and first and sub.birth_date):
        raise X12Error(
            "the subscriber needs a member ID, or a last name, first name and birth date to be "
            "searched by (NM1/DMG, loop 2100C)",
            segment_id="NM1",
            element=9,
        )
    out: list[SegmentData] = [("HL", ["3", "2", "22", "1" if has_dependent else "0"])]
    if trn is not None:
        out.append(trn)
    middle, suffix = _name(sub.middle_name, 25), _name(sub.suffix, 10)
    qualifier = "MI" if member_id else ""
    out.append(("NM1", ["IL", "1", last, first, middle, "", suffix, qualifier, member_id]))
    out.extend(_person_segments(sub))
    return out


def _dependent(dep: Person, trn: SegmentData) -> list[SegmentData]:
    """Loop 2000D/2100D: HL*4*3*23*0, the TRN, NM1*03 (a name, no member ID), N3/N4 and DMG."""
    last, first = _name(dep.last_name, 60), _name(dep.first_name, 35)
    if not (last and first):
        raise X12Error(
            "the dependent needs a last and first name (NM103/NM104, loop 2100D)",
            segment_id="NM1",
            element=3,
        )
    middle, suffix = _name(dep.middle_name, 25), _name(dep.suffix, 10)
    return [
        ("HL", ["4", "3", "23", "0"]),
        trn,
        ("NM1", ["03", "1", last, first, middle, "", suffix]),
        *_person_segments(dep),
    ]


def _body(inquiry: EligibilityInquiry) -> list[SegmentData]:
    """The segments between ST and SE, loop by loop (BHT04/BHT05 left for build_270)."""
    source = _information_source(inquiry.payer)
    receiver = _information_receiver(inquiry.provider)
    trace, originator = _trace(inquiry)
    trn: SegmentData = ("TRN", ["1", trace, originator])  # at the patient's level
    dep = inquiry.dependent
    body: list[SegmentData] = [("BHT", ["0022", "13", trace, "", ""]), *source, *receiver]
    body += _subscriber(inquiry.subscriber, trn if dep is None else None, dep is not None)
    if dep is not None:
        body += _dependent(dep, trn)
    body += _patient_tail(inquiry)
    return body


def build_270(
    inquiry: EligibilityInquiry,
    *,
    sender_id: str,
    receiver_id: str,
    control_number: int,
    now: datetime,
    sender_qualifier: str = "ZZ",
    receiver_qualifier: str = "ZZ",
    usage: str = "P",
    ack_requested: bool = False,
) -> str:
    """The 270 interchange asking ``inquiry`` (ISA13 = GS06 = ``control_number``).

    Raises :class:`X12Error` naming the element when the inquiry cannot be written (an ID with a
    delimiter, an invalid NPI, a name with no basic characters).
    """
    body = _body(inquiry)
    body[0] = ("BHT", ["0022", "13", inquiry.trace_number.strip(), _d8(now), now.strftime("%H%M")])
    return build_interchange(
        [body],
        transaction_set="270",
        convention=CONVENTION,
        functional_id="HS",
        sender_id=sender_id,
        receiver_id=receiver_id,
        control_number=control_number,
        now=now,
        sender_qualifier=sender_qualifier,
        receiver_qualifier=receiver_qualifier,
        usage=usage,
        ack_requested=ack_requested,
    )


def normalize_inquiry(inquiry: EligibilityInquiry) -> EligibilityInquiry:
    """``inquiry`` as :func:`read_270` will read back what :func:`build_270` wrote: names and
    addresses transliterated and cut, identifiers stripped."""

    def person(p: Person) -> Person:
        addr = p.address
        if addr is not None:
            (_, n3), (_, n4) = _address(addr)
            addr = Address(*(str(v) for v in n3), *(str(v) for v in n4))
        return replace(
            p,
            last_name=_name(p.last_name, 60),
            first_name=_name(p.first_name, 35),
            middle_name=_name(p.middle_name, 25),
            suffix=_name(p.suffix, 10),
            member_id=p.member_id.strip(),
            gender=p.gender if p.gender in ("F", "M") and p.birth_date else "",
            address=addr,
        )

    prov = inquiry.provider
    return replace(
        inquiry,
        payer=replace(
            inquiry.payer,
            name=_text(inquiry.payer.name, 60),
            payer_id=inquiry.payer.payer_id.strip(),
        ),
        provider=replace(
            prov,
            npi=prov.npi.strip(),
            organization=_text(prov.organization, 60),
            last_name="" if prov.organization else _name(prov.last_name, 60),
            first_name="" if prov.organization else _name(prov.first_name, 35),
        ),
        subscriber=person(inquiry.subscriber),
        dependent=person(inquiry.dependent) if inquiry.dependent else None,
        trace_number=inquiry.trace_number.strip(),
        originator_id=inquiry.originator_id.strip(),
        service_types=tuple(inquiry.service_types) or ("30",),
    )


# -- reading -------------------------------------------------------------------------------------


def _date(value: str, seg: Segment, element: int) -> date:
    try:
        return datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        raise X12Error(
            f"{seg.id}{element:02d} {value!r} is not a CCYYMMDD date",
            segment_id=seg.id,
            position=seg.position,
            element=element,
        ) from None


def _read_person(level: Level) -> Person:
    """The person of a 2000C/2000D level (NM1*IL or NM1*03, N3, N4, DMG)."""
    nm1: Segment | None = None
    n3: Segment | None = None
    n4: Segment | None = None
    dmg: Segment | None = None
    for seg in level.segments:
        sid = seg.id
        if sid == "NM1" and seg.get(1) in ("IL", "03"):
            nm1 = seg
        elif sid == "N3":
            n3 = seg
        elif sid == "N4":
            n4 = seg
        elif sid == "DMG" and seg.get(1) == "D8":
            dmg = seg
    address = None
    if n3 is not None or n4 is not None:
        a, b = n3 or Segment(["N3"]), n4 or Segment(["N4"])
        address = Address(a.get(1), a.get(2), b.get(1), b.get(2), b.get(3), b.get(4))
    name = nm1 or Segment(["NM1"])
    return Person(
        last_name=name.get(3),
        first_name=name.get(4),
        middle_name=name.get(5),
        suffix=name.get(7),
        member_id=name.get(9),
        birth_date=_date(dmg.get(2), dmg, 2) if dmg is not None else None,
        gender=dmg.get(3) if dmg is not None else "",
        address=address,
    )


def _read_tail(segments: list[Segment]) -> tuple[str, str, date | None, date | None, list[str]]:
    """TRN02, TRN03, the DTP*291 date or range, and the EQ01 service types of a level."""
    trace = originator = ""
    start: date | None = None
    end: date | None = None
    types: list[str] = []
    for seg in segments:
        if seg.id == "TRN":
            trace, originator = seg.get(2), seg.get(3)
        elif seg.id == "DTP" and seg.get(1) == "291":
            value = seg.get(3)
            if seg.get(2) == "RD8" and "-" in value:
                first, last = value.split("-", 1)
                start, end = _date(first, seg, 3), _date(last, seg, 3)
            else:
                start = _date(value, seg, 3)
        elif seg.id == "EQ":
            types.extend(seg.repetitions(1))
    return trace, originator, start, end, types


def _name_segment(level: Level, entity: str) -> Segment:
    """The NM1 of a 2000A/2000B level: NM101 ``entity`` (PR, 1P), else the first NM1 (2100B
    also allows FA facility, 80 hospital, 2B third-party administrator ...)."""
    names = [seg for seg in level.segments if seg.id == "NM1"]
    for seg in names:
        if seg.get(1) == entity:
            return seg
    if names:
        return names[0]
    raise X12Error(
        f"loop {level.loop} (HL {level.id}) has no NM1*{entity}",
        segment_id="HL",
        position=level.hl.position,
    )


def read_270(source: str | bytes | Interchange, *, strict: bool = True) -> list[EligibilityInquiry]:
    """Every inquiry in a 270 interchange: one per patient (a subscriber without dependents,
    or a dependent)."""
    interchange = (
        source if isinstance(source, Interchange) else parse_interchange(source, strict=strict)
    )
    out: list[EligibilityInquiry] = []
    for tx in interchange.transactions():
        if tx.id != "270":
            raise X12Error(
                f"ST01 {tx.id!r} is not 270", segment_id="ST", position=tx.st.position, element=1
            )
        warnings = interchange.warnings
        levels = hierarchy(tx, warnings)
        for level in levels:
            if level.code not in ("22", "23") or (level.code == "22" and level.children):
                continue
            chain = level.ancestors()
            source_level = next(lv for lv in chain if lv.code == "20")
            receiver_level = next(lv for lv in chain if lv.code == "21")
            pr = _name_segment(source_level, "PR")
            rc = _name_segment(receiver_level, "1P")
            person = _read_person(level)
            trace, originator, start, end, types = _read_tail(level.segments)
            if level.code == "23":
                assert level.parent is not None
                subscriber, dependent = _read_person(level.parent), person
                if not trace:
                    trace, originator, *_ = _read_tail(level.parent.segments)
            else:
                subscriber, dependent = person, None
            organization = rc.get(3) if rc.get(2) == "2" else ""
            out.append(
                EligibilityInquiry(
                    payer=Payer(pr.get(3), pr.get(9), pr.get(8)),
                    provider=Provider(
                        npi=rc.get(9),
                        organization=organization,
                        last_name="" if organization else rc.get(3),
                        first_name="" if organization else rc.get(4),
                        id_qualifier=rc.get(8),
                    ),
                    subscriber=subscriber,
                    trace_number=trace,
                    originator_id=originator,
                    dependent=dependent,
                    service_date=start,
                    service_date_end=end,
                    service_types=tuple(types),
                )
            )
    return out
