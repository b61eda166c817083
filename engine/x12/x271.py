"""The 271 eligibility response (005010X279A1) read into typed results, one per patient.

The loops, as the guide lays out the 271 and as :func:`read_271` finds them::

    2000A  HL*..*20   AAA (request validation)
    2100A    NM1*PR   PER, AAA                      the payer (information source)
    2000B  HL*..*21
    2100B    NM1*1P   REF, N3, N4, AAA, PRV         the provider who asked (information receiver)
    2000C  HL*..*22   TRN (TRN01 2 = the 270's trace echoed, 1 = the payer's own)
    2100C    NM1*IL   REF, N3, N4, AAA, PRV, DMG, INS, HI, DTP, MPI      the subscriber
    2110C      EB     HSD, REF, DTP, AAA, MSG, III  one eligibility or benefit statement
    2120C        LS .. NM1, N3, N4, PER, PRV .. LE  entities related to the benefit
    2000D  HL*..*23   TRN; 2100D NM1*03 ...; 2110D EB ...; 2120D   the dependent, likewise

Every AAA is kept with the loop it came from, its reject reason (AAA03) and follow-up action
(AAA04) named (:mod:`engine.x12.codes`). An :class:`EligibilityResult` is made for each dependent
and for each subscriber that is itself the patient: one with a TRN, an EB or an AAA of its own,
or without dependents. A subscriber level that only carries the member ID for its dependents
(the IG's rule for 2000D) is the ``subscriber`` of their results instead.

A result's ``errors`` are the AAAs that apply to it: those of the payer (2000A, 2100A), the
provider (2100B), the subscriber (2100C, for a dependent too), its own (2100D) and its benefits
(2110C/D, also found on each :class:`Benefit`). ``rejected`` is true when any of them is above
the benefit level: then the payer gave no eligibility for the patient.

Amounts (EB07), percents (EB08: a decimal fraction, ``.2`` is 20%) and quantities (EB10) are
:class:`~decimal.Decimal` as sent. ``EB06 29 Remaining`` means the amount is what remains, never
what was used; the reader does not compute one from the other.

Incomplete: HSD (delivery), III (2115 additional information), HI and MPI are kept as raw
segments, not interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from engine.x12 import codes
from engine.x12.codes import Action, Code, describe
from engine.x12.envelope import Interchange, Transaction, parse_interchanges
from engine.x12.errors import X12Error
from engine.x12.loops import Level, eligibility_version, hierarchy
from engine.x12.segments import Segment, read_d8
from engine.x12.x270 import Address

__all__ = [
    "Benefit",
    "Contact",
    "DateInfo",
    "EligibilityResponse",
    "EligibilityResult",
    "Entity",
    "Reference",
    "RequestError",
    "Trace",
    "read_271",
    "read_271_transaction",
]

_ACTIVE = frozenset("12345")
_INACTIVE = frozenset("678")
_SEVERITY: dict[Action, int] = {"none": 0, "retry": 1, "fix": 2, "stop": 3}


@dataclass(frozen=True, slots=True)
class Trace:
    """TRN: ``kind`` TRN01 (``2`` = referenced, the 270's trace echoed back; ``1`` = current,
    the payer's own), ``number`` TRN02, ``originator`` TRN03, ``reference`` TRN04."""

    kind: str
    number: str
    originator: str
    reference: str = ""

    @property
    def echoed(self) -> bool:
        return self.kind == "2"


@dataclass(frozen=True, slots=True)
class DateInfo:
    """DTP: qualifier (DTP01) and a date (D8) or a range (RD8, ``end`` set)."""

    qualifier: Code
    start: date
    end: date | None = None


@dataclass(frozen=True, slots=True)
class Reference:
    """REF: qualifier (REF01), value (REF02), description (REF03)."""

    qualifier: str
    value: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class Contact:
    """PER: function (PER01), name (PER02), ``(qualifier, value)`` pairs (PER03-PER08)."""

    function: str
    name: str
    channels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RequestError:
    """AAA: why the payer could not answer, in which loop, and what it asks us to do."""

    loop: str
    valid_request: bool
    reason: Code
    follow_up: Code | None
    position: int

    @property
    def action(self) -> Action:
        """AAA04 in the engine's terms (``fix`` when the payer gave no AAA04)."""
        if self.follow_up is None:
            return "fix"
        return codes.FOLLOW_UP.get(self.follow_up.code, ("fix", 0))[0]

    @property
    def wait_days(self) -> int:
        """Days to wait before sending again (AAA04 W: 30, X: 10)."""
        if self.follow_up is None:
            return 0
        return codes.FOLLOW_UP.get(self.follow_up.code, ("fix", 0))[1]

    def __str__(self) -> str:
        follow = f" ({self.follow_up})" if self.follow_up else ""
        return f"{self.loop}: {self.reason}{follow}"


@dataclass(eq=False, slots=True)
class Entity:
    """An NM1 and what follows it in its loop: a payer, a provider, a person, a 2120 entity."""

    entity: Code
    is_person: bool
    last_name: str
    first_name: str = ""
    middle_name: str = ""
    suffix: str = ""
    id_qualifier: str = ""
    id: str = ""
    address: Address | None = None
    references: list[Reference] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)
    provider_codes: list[tuple[str, str]] = field(default_factory=list)  # PRV01, PRV03
    position: int = 0

    @property
    def name(self) -> str:
        """``LAST, FIRST MIDDLE SUFFIX`` for a person, the name for an organization."""
        if not self.is_person:
            return self.last_name
        given = " ".join(p for p in (self.first_name, self.middle_name, self.suffix) if p)
        return f"{self.last_name}, {given}" if given else self.last_name


@dataclass(eq=False, slots=True)
class Benefit:
    """One EB (loop 2110C/D) and the segments of its loop."""

    info: Code
    coverage_level: Code | None
    service_types: list[Code]
    insurance_type: Code | None
    plan_name: str
    time_period: Code | None
    amount: Decimal | None
    percent: Decimal | None
    quantity_qualifier: Code | None
    quantity: Decimal | None
    authorization_required: bool | None
    network: Code | None
    procedure: list[str]
    position: int
    dates: list[DateInfo] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    errors: list[RequestError] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    raw: list[Segment] = field(default_factory=list)  # HSD, III as sent

    @property
    def in_network(self) -> bool | None:
        """EB12: Y in network, N out of network; None for W (not applicable), U or absent."""
        if self.network is None:
            return None
        return {"Y": True, "N": False}.get(self.network.code)

    @property
    def active(self) -> bool | None:
        """EB01 1-5 active, 6-8 inactive, anything else says nothing about coverage."""
        code = self.info.code
        return True if code in _ACTIVE else False if code in _INACTIVE else None


@dataclass(eq=False)
class EligibilityResult:
    """What the payer said about one patient (a 2000C subscriber or a 2000D dependent)."""

    loop: str
    hl_id: str
    person: Entity | None
    subscriber: Entity | None
    payer: Entity | None
    receiver: Entity | None
    birth_date: date | None = None
    gender: Code | None = None
    relationship: Code | None = None  # INS02 (18 self for a subscriber without INS)
    dates: list[DateInfo] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    benefits: list[Benefit] = field(default_factory=list)
    errors: list[RequestError] = field(default_factory=list)
    raw: list[Segment] = field(default_factory=list)  # HI, MPI as sent

    @property
    def is_dependent(self) -> bool:
        return self.loop == "2000D"

    @property
    def member_id(self) -> str:
        """The patient's NM109, else (a dependent without one) the subscriber's."""
        if self.person is not None and self.person.id:
            return self.person.id
        return self.subscriber.id if self.subscriber is not None else ""

    @property
    def active(self) -> bool | None:
        """True when any EB says active coverage (EB01 1-5), else False when one says inactive
        (6-8), else None (the payer did not say)."""
        states = {b.active for b in self.benefits}
        return True if True in states else False if False in states else None

    @property
    def plan(self) -> str:
        """EB05 of the first coverage statement (EB01 1-8) that has one, else of any EB."""
        for benefit in self.benefits:
            if benefit.plan_name and benefit.active is not None:
                return benefit.plan_name
        return next((b.plan_name for b in self.benefits if b.plan_name), "")

    @property
    def rejected(self) -> bool:
        """An AAA above the benefit level: the payer gave no eligibility for this patient."""
        return any(not e.loop.startswith("2110") for e in self.errors)

    @property
    def action(self) -> Action:
        """The most demanding follow-up of the errors (``none`` without errors)."""
        worst: Action = "none"
        for err in self.errors:
            if _SEVERITY[err.action] > _SEVERITY[worst]:
                worst = err.action
        return worst

    def matches(self, trace_number: str, originator: str | None = None) -> bool:
        """Whether this result answers the 270 whose TRN02 (and TRN03) we sent."""
        return any(
            t.echoed and t.number == trace_number and originator in (None, t.originator)
            for t in self.traces
        )


@dataclass(eq=False)
class EligibilityResponse:
    """One 271 transaction set: who answered, errors above the patient level, the results."""

    control_number: str
    reference: str
    created: datetime | None
    payer: Entity | None
    receiver: Entity | None
    errors: list[RequestError]
    results: list[EligibilityResult]
    warnings: list[str]


# -- element readers -----------------------------------------------------------------------------


def _fail(seg: Segment, element: int, message: str) -> X12Error:
    text = f"{seg.id}{element:02d} {message}"
    return X12Error(text, segment_id=seg.id, position=seg.position, element=element)


def _decimal(seg: Segment, element: int) -> Decimal | None:
    value = seg.get(element)
    if not value:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise _fail(seg, element, f"{value!r} is not a number") from None
    if not number.is_finite():
        raise _fail(seg, element, f"{value!r} is not a number")
    return number


def _dtp(seg: Segment) -> DateInfo:
    fmt, value = seg.get(2).strip(), seg.get(3).strip()
    qualifier = describe(codes.DATE_QUALIFIERS, seg.get(1))
    if fmt == "RD8":
        first, sep, last = value.partition("-")
        if not sep:
            raise _fail(seg, 3, f"{value!r} is not a CCYYMMDD-CCYYMMDD range")
        return DateInfo(qualifier, read_d8(seg, 3, first), read_d8(seg, 3, last))
    if fmt != "D8":
        raise _fail(seg, 2, f"{fmt!r} is not D8 or RD8")
    return DateInfo(qualifier, read_d8(seg, 3, value))


def _optional(table: dict[str, str], value: str) -> Code | None:
    return describe(table, value) if value else None


_EB_PAD = [""] * 14


def _eb(seg: Segment) -> Benefit:
    el = seg.elements
    if len(el) < 14:
        el = el + _EB_PAD[len(el) :]
    auth = el[11]
    return Benefit(
        info=describe(codes.ELIGIBILITY_CODES, el[1]),
        coverage_level=_optional(codes.COVERAGE_LEVELS, el[2]),
        service_types=[describe(codes.SERVICE_TYPES, c) for c in seg.repetitions(3)],
        insurance_type=_optional(codes.INSURANCE_TYPES, el[4]),
        plan_name=el[5],
        time_period=_optional(codes.TIME_PERIODS, el[6]),
        amount=_decimal(seg, 7) if el[7] else None,
        percent=_decimal(seg, 8) if el[8] else None,
        quantity_qualifier=_optional(codes.QUANTITY_QUALIFIERS, el[9]),
        quantity=_decimal(seg, 10) if el[10] else None,
        authorization_required=True if auth == "Y" else False if auth == "N" else None,
        network=_optional(codes.NETWORK_INDICATORS, el[12]),
        procedure=seg.components(13) if el[13] else [],
        position=seg.position,
    )


def _aaa(seg: Segment, loop: str) -> RequestError:
    valid = seg.get(1)
    if valid not in ("Y", "N"):
        raise _fail(seg, 1, f"{valid!r} is not Y or N (valid request indicator)")
    if not seg.get(3):
        raise _fail(seg, 3, "is empty: an AAA must give its reject reason code")
    return RequestError(
        loop=loop,
        valid_request=valid == "Y",
        reason=describe(codes.REJECT_REASONS, seg.get(3)),
        follow_up=_optional(codes.FOLLOW_UP_ACTIONS, seg.get(4)),
        position=seg.position,
    )


def _nm1(seg: Segment) -> Entity:
    return Entity(
        entity=describe(codes.ENTITY_CODES, seg.get(1)),
        is_person=seg.get(2) == "1",
        last_name=seg.get(3),
        first_name=seg.get(4),
        middle_name=seg.get(5),
        suffix=seg.get(7),
        id_qualifier=seg.get(8),
        id=seg.get(9),
        position=seg.position,
    )


def _attach(entity: Entity, seg: Segment) -> None:
    """N3, N4, REF, PER or PRV onto the entity of its loop."""
    sid = seg.id
    if sid == "N3":
        old = entity.address or Address("")
        entity.address = Address(
            seg.get(1), seg.get(2), old.city, old.state, old.postal_code, old.country
        )
    elif sid == "N4":
        old = entity.address or Address("")
        entity.address = Address(
            old.line1, old.line2, seg.get(1), seg.get(2), seg.get(3), seg.get(4)
        )
    elif sid == "REF":
        entity.references.append(Reference(seg.get(1), seg.get(2), seg.get(3)))
    elif sid == "PER":
        pairs = tuple((seg.get(n), seg.get(n + 1)) for n in (3, 5, 7) if seg.get(n + 1))
        entity.contacts.append(Contact(seg.get(1), seg.get(2), pairs))
    elif sid == "PRV":
        entity.provider_codes.append((seg.get(1), seg.get(3)))


# -- walking one HL level ------------------------------------------------------------------------

_NAME_LOOPS = {"20": "2100A", "21": "2100B", "22": "2100C", "23": "2100D"}
_PARTY_SEGMENTS = frozenset(("N3", "N4", "REF", "PER", "PRV"))


@dataclass(eq=False)
class _LevelData:
    entity: Entity | None = None
    errors: list[RequestError] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    dates: list[DateInfo] = field(default_factory=list)
    benefits: list[Benefit] = field(default_factory=list)
    birth_date: date | None = None
    gender: Code | None = None
    relationship: Code | None = None
    raw: list[Segment] = field(default_factory=list)


def _walk(level: Level, warnings: list[str]) -> _LevelData:
    data = _LevelData()
    code = level.code
    name_loop = _NAME_LOOPS[code]
    suffix = name_loop[-1]
    benefit: Benefit | None = None
    related: Entity | None = None
    in_ls = False
    for seg in level.segments:
        sid = seg.elements[0]
        if in_ls:  # 2120C/D, between LS and LE
            if sid == "LE":
                in_ls, related = False, None
            elif sid == "NM1" and benefit is not None:
                related = _nm1(seg)
                benefit.entities.append(related)
            elif sid in _PARTY_SEGMENTS and related is not None:
                _attach(related, seg)
            else:
                warnings.append(f"{seg.where()}: unexpected in loop 2120{suffix}; ignored")
            continue
        if sid == "EB":
            if data.entity is None:
                warnings.append(f"{seg.where()}: EB before the NM1 of loop {name_loop}")
            benefit = _eb(seg)
            data.benefits.append(benefit)
            continue
        if benefit is not None:  # 2110C/D
            if sid == "DTP":
                benefit.dates.append(_dtp(seg))
            elif sid == "AAA":
                err = _aaa(seg, f"2110{suffix}")
                benefit.errors.append(err)
                data.errors.append(err)
            elif sid == "MSG":
                benefit.messages.append(seg.get(1))
            elif sid == "REF":
                benefit.references.append(Reference(seg.get(1), seg.get(2), seg.get(3)))
            elif sid == "LS":
                in_ls = True
            elif sid in ("HSD", "III"):
                benefit.raw.append(seg)
            else:
                warnings.append(f"{seg.where()}: unexpected in loop 2110{suffix}; ignored")
            continue
        if sid == "NM1":
            if data.entity is not None:
                warnings.append(f"{seg.where()}: a second NM1 in loop {name_loop}; ignored")
            else:
                data.entity = _nm1(seg)
        elif sid == "AAA":
            data.errors.append(_aaa(seg, name_loop if data.entity is not None else level.loop))
        elif sid == "TRN" and code in ("22", "23"):
            data.traces.append(Trace(seg.get(1), seg.get(2), seg.get(3), seg.get(4)))
        elif sid in _PARTY_SEGMENTS and data.entity is not None:
            _attach(data.entity, seg)
        elif sid == "DMG" and code in ("22", "23"):
            if seg.get(1) == "D8" and seg.get(2):
                data.birth_date = read_d8(seg, 2, seg.get(2))
            data.gender = _optional(codes.GENDERS, seg.get(3))
        elif sid == "INS" and code in ("22", "23"):
            data.relationship = _optional(codes.RELATIONSHIPS, seg.get(2))
        elif sid == "DTP" and code in ("22", "23"):
            data.dates.append(_dtp(seg))
        elif sid in ("HI", "MPI") and code in ("22", "23"):
            data.raw.append(seg)
        else:
            warnings.append(f"{seg.where()}: unexpected in loop {name_loop}; ignored")
    return data


def _created(seg: Segment | None) -> datetime | None:
    if seg is None or len(seg.get(4)) != 8:
        return None
    digits = seg.get(5)[:6].ljust(6, "0") if seg.get(5).isdigit() else "000000"
    try:
        return datetime.strptime(seg.get(4) + digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def read_271_transaction(tx: Transaction, warnings: list[str] | None = None) -> EligibilityResponse:
    """One 271 transaction set as an :class:`EligibilityResponse`."""
    if tx.id != "271":
        raise X12Error(
            f"ST01 {tx.id!r} is not 271", segment_id="ST", position=tx.st.position, element=1
        )
    notes: list[str] = [] if warnings is None else warnings
    body = tx.body
    bht = body[0] if body and body[0].id == "BHT" else None
    if bht is None:
        notes.append(f"{tx.st.where()}: no BHT after ST")
    levels = hierarchy(tx, notes)
    walked = {id(level): _walk(level, notes) for level in levels}
    sources = [lv for lv in levels if lv.code == "20"]
    payer = walked[id(sources[0])].entity if sources else None
    receivers = [lv for lv in levels if lv.code == "21"]
    receiver = walked[id(receivers[0])].entity if receivers else None
    top_errors = [e for lv in levels if lv.code in ("20", "21") for e in walked[id(lv)].errors]
    results: list[EligibilityResult] = []
    for level in levels:
        if level.code not in ("22", "23"):
            continue
        data = walked[id(level)]
        if (
            level.code == "22"
            and level.children
            and not (data.traces or data.benefits or data.errors)
        ):
            continue  # only the subscriber of its dependents' results
        chain = level.ancestors()
        inherited = [e for lv in chain for e in walked[id(lv)].errors]
        subscriber = data.entity
        relationship = data.relationship
        if level.code == "23":
            assert level.parent is not None
            subscriber = walked[id(level.parent)].entity
        elif relationship is None:
            relationship = describe(codes.RELATIONSHIPS, "18")
        chain_payer = next((walked[id(lv)].entity for lv in chain if lv.code == "20"), None)
        chain_receiver = next((walked[id(lv)].entity for lv in chain if lv.code == "21"), None)
        results.append(
            EligibilityResult(
                loop=level.loop,
                hl_id=level.id,
                person=data.entity,
                subscriber=subscriber,
                payer=chain_payer,
                receiver=chain_receiver,
                birth_date=data.birth_date,
                gender=data.gender,
                relationship=relationship,
                dates=data.dates,
                traces=data.traces,
                benefits=data.benefits,
                errors=inherited + data.errors,
                raw=data.raw,
            )
        )
    return EligibilityResponse(
        control_number=tx.control_number,
        reference=bht.get(3) if bht is not None else "",
        created=_created(bht),
        payer=payer,
        receiver=receiver,
        errors=top_errors,
        results=results,
        warnings=notes,
    )


def read_271(
    source: str | bytes | Interchange, *, strict: bool = False
) -> list[EligibilityResponse]:
    """Every 271 transaction set in ``source`` (text, bytes or a parsed interchange).

    Read leniently by default: a wrong SE01/GE01/IEA01 count or a control number that does not
    match its header (SE02, GE02, IEA02) becomes a warning naming the segment and element
    (``segment 14 (SE): SE01 says 12 segments, the transaction has 13``), because the answer
    inside is still the payer's answer; ``strict=True`` raises them instead (see
    :mod:`engine.x12.envelope`). A 4010 (004010X092A1) 271 is read with a warning saying so;
    another version is refused (:func:`engine.x12.loops.eligibility_version`).

    Raises :class:`X12Error` naming the segment and element for an envelope that cannot be
    followed (no SE, no IEA, data cut off), a transaction set that is not a 271, an HL hierarchy
    that does not link up, or a number or date that cannot be read. Oddities that can be read
    around are in each response's ``warnings`` (the interchange's envelope warnings first).
    """
    interchanges = (
        [source] if isinstance(source, Interchange) else parse_interchanges(source, strict=strict)
    )
    out: list[EligibilityResponse] = []
    for interchange in interchanges:
        for group in interchange.groups:
            for tx in group.transactions:
                notes = list(interchange.warnings)
                if tx.id == "271":
                    eligibility_version(group, tx, notes)
                out.append(read_271_transaction(tx, notes))
    return out
