"""X12 270 → a FHIR R4 Bundle (type ``collection``) of CoverageEligibilityRequests.

One CoverageEligibilityRequest per patient the 270 asks about: a 2000C subscriber without
dependents, or each 2000D dependent (005010X279A1; a 004010X092A1 270 is read the same way with a
warning, :func:`engine.x12.loops.eligibility_version`). Beside each request, what it references:

==========================  ================================================================
270                         FHIR
==========================  ================================================================
2100A NM1*PR (NM103, NM109) ``insurer`` → Organization: ``name``, type ``pay``; NM108 PI → the
                            identifier typed v2-0203 ``NIIP`` (as the HL7v2 IN1-3 mapping
                            writes it), another NM108 → an identifier typed by text
2100B NM1*1P/FA/...         ``provider`` → Practitioner (NM102 1: NM103 family, NM104 given)
                            or Organization (NM102 2: NM103 name); NM108 XX → identifier of
                            system ``http://hl7.org/fhir/sid/us-npi``, SV → typed v2-0203
                            ``PRN``, FI/24 → ``TAX``; N3/N4 → ``address``
2100C NM1*IL NM109          Coverage ``subscriberId`` (and identifier typed ``MB``), ``payor``
                            the payer, ``beneficiary`` the patient, ``relationship`` self
2100C/D NM1 names, N3/N4,   Patient (the subscriber, or the 2100D dependent): ``name``
DMG02, DMG03                (family, given: first and middle, suffix), ``address``,
                            ``birthDate``, ``gender`` (F, M, U)
2000D (a dependent)         the subscriber becomes a RelatedPerson (``Coverage.subscriber``,
                            ``patient`` the dependent); 2100D INS02 01 → relationship
                            ``spouse``, 19 → ``child``, another or none → ``other``
TRN (2000C/2000D)           ``identifier``: TRN02 as ``value``, typed by text "X12 270 trace
                            number (TRN02)" as the 271 converter writes the request it echoes
                            (:mod:`engine.x12.fhir_response`), TRN03 as the assigner's
                            identifier; the dependent's TRN, else the subscriber's
BHT03                       a further ``identifier`` (the submitter's transaction reference)
BHT04                       ``created`` (a date: BHT05 has no time zone)
DTP*291 D8 / RD8            ``servicedDate`` / ``servicedPeriod``
EQ01 (repeats)              one ``item`` per code: ``category`` coded in the X12 service type
                            system the engine uses (:data:`X12_SERVICE_TYPE_SYSTEM`), plus
                            ``ex-benefitcategory`` when the code is one of its 28
==========================  ================================================================

Full URLs are ``urn:uuid:`` UUIDs derived from the interchange, transaction and HL numbers (the
same 270 always gives the same Bundle), and every reference is a full URL in the Bundle.
``purpose`` is ``validation`` and ``benefits``: a 270 asks whether the coverage is in force and
what it pays for the service types asked.

What no row above takes (a REF, PRV, HI, III, an EQ's procedure or coverage level, a DTP other
than 291, a segment the guide does not place there) is reported in a warning naming the segment
and loop, never copied and never dropped silently; warnings carry no values (PHI).

Incomplete: 2100C REF (group, plan, Medicaid numbers) and PRV are not mapped; NM108 XV (CMS plan
ID) reads back as a payer ID typed by text, so a round trip writes it as PI.
"""

from __future__ import annotations

import uuid
from typing import Any

from engine.x12 import codes
from engine.x12.envelope import FunctionalGroup, Interchange, Transaction, parse_interchanges
from engine.x12.errors import X12Error
from engine.x12.fhir_terms import (
    BENEFIT_CATEGORY_DISPLAY,
    BENEFIT_CATEGORY_SYSTEM,
    NPI_SYSTEM,
    RELATIONSHIP_SYSTEM,
    TRACE_TYPE_TEXT,
    V2_0203_SYSTEM,
    X12_SERVICE_TYPE_SYSTEM,
)
from engine.x12.loops import Level, eligibility_version, hierarchy
from engine.x12.segments import Segment, read_d8

__all__ = ["x270_to_fhir"]

Json = dict[str, Any]
_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:engine:x12:270")
_GENDERS = {"F": "female", "M": "male", "U": "unknown"}
_RELATIONSHIPS = {"01": "spouse", "19": "child"}
#: NM108 → v2-0203 identifier type (code, display) for a provider identifier other than the NPI
_PROVIDER_ID_TYPES = {
    "SV": ("PRN", "Provider number"),
    "FI": ("TAX", "Tax ID number"),
    "24": ("TAX", "Tax ID number"),
}
_ORG_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/organization-type"


class _Bundle:
    """The entries, each added once under a name, with a full URL stable for the same 270."""

    def __init__(self) -> None:
        self.entries: list[Json] = []
        self.urls: dict[str, str] = {}

    def add(self, name: str, resource: Json) -> Json:
        """A reference (by full URL) to the resource added under ``name`` (added once)."""
        url = self.urls.get(name)
        if url is None:
            url = f"urn:uuid:{uuid.uuid5(_NS, name)}"
            self.urls[name] = url
            self.entries.append({"fullUrl": url, "resource": resource})
        return {"reference": url}


def _passed_over(seg: Segment, loop: str, warnings: list[str], why: str = "") -> None:
    qualifier = f"*{seg.get(1)}" if seg.id in ("REF", "DTP", "PRV", "INS") and seg.get(1) else ""
    reason = f" ({why})" if why else ""
    warnings.append(
        f"{seg.where()}: {seg.id}{qualifier} in loop {loop} is not carried into FHIR{reason}; "
        "passed over"
    )


def _address(n3: Segment | None, n4: Segment | None) -> Json | None:
    address: Json = {}
    lines = [v for v in ((n3.get(1), n3.get(2)) if n3 else ()) if v]
    if lines:
        address["line"] = lines
    if n4 is not None:
        for key, n in (("city", 1), ("state", 2), ("postalCode", 3), ("country", 4)):
            if n4.get(n):
                address[key] = n4.get(n)
    return address or None


def _human_name(nm1: Segment) -> Json | None:
    name: Json = {}
    if nm1.get(3):
        name["family"] = nm1.get(3)
    given = [v for v in (nm1.get(4), nm1.get(5)) if v]
    if given:
        name["given"] = given
    if nm1.get(7):
        name["suffix"] = [nm1.get(7)]
    return name or None


class _Party:
    """An NM1 loop (2100A-D) as read: the NM1 and the segments this converter takes from it."""

    def __init__(self, level: Level, warnings: list[str]) -> None:
        self.level = level
        self.nm1: Segment | None = None
        self.n3: Segment | None = None
        self.n4: Segment | None = None
        self.dmg: Segment | None = None
        self.ins: Segment | None = None
        self.traces: list[Segment] = []
        self.service: Segment | None = None  # DTP*291
        self.service_types: list[str] = []
        suffix = level.loop[-1]
        patient_level = level.code in ("22", "23")
        in_2110 = False  # the 2110C/D loop starts at the first EQ
        for seg in level.segments:
            sid = seg.id
            in_2110 = in_2110 or (sid == "EQ" and patient_level)
            loop = f"2110{suffix}" if in_2110 else f"2100{suffix}"
            if sid == "NM1" and self.nm1 is None:
                self.nm1 = seg
            elif sid == "N3" and self.nm1 is not None and self.n3 is None:
                self.n3 = seg
            elif sid == "N4" and self.nm1 is not None and self.n4 is None:
                self.n4 = seg
            elif sid == "TRN" and patient_level:
                self.traces.append(seg)
            elif sid == "DMG" and patient_level and self.dmg is None:
                self.dmg = seg
            elif sid == "INS" and patient_level:
                self.ins = seg
            elif sid == "DTP" and patient_level and seg.get(1) == "291" and self.service is None:
                self.service = seg
            elif sid == "EQ" and patient_level:
                self._eq(seg, warnings)
            else:
                why = "" if patient_level or sid not in ("TRN", "DMG", "EQ") else "not a patient"
                _passed_over(seg, level.loop if sid == "NM1" else loop, warnings, why)

    def _eq(self, seg: Segment, warnings: list[str]) -> None:
        for code in seg.repetitions(1):
            if code not in self.service_types:
                self.service_types.append(code)
        extra = [f"EQ{n:02d}" for n in range(2, 6) if seg.get(n)]
        if extra:
            warnings.append(
                f"{seg.where()}: {', '.join(extra)} (procedure, coverage level, diagnosis "
                f"pointer) in loop 2110{self.level.loop[-1]} are not carried into FHIR; "
                "passed over"
            )

    def require_nm1(self, entity: str) -> Segment:
        if self.nm1 is None:
            raise X12Error(
                f"loop {self.level.loop} (HL {self.level.id}) has no NM1 ({entity})",
                segment_id="HL",
                position=self.level.hl.position,
            )
        return self.nm1


def _payer(party: _Party) -> Json:
    nm1 = party.require_nm1("the payer, 2100A")
    org: Json = {
        "resourceType": "Organization",
        "name": nm1.get(3) or "unnamed payer",
        "type": [{"coding": [{"system": _ORG_TYPE_SYSTEM, "code": "pay", "display": "Payer"}]}],
    }
    if nm1.get(9):
        ident: Json = {"value": nm1.get(9)}
        if nm1.get(8) == "PI":
            ident["type"] = {"coding": [{"system": V2_0203_SYSTEM, "code": "NIIP"}]}
        else:
            ident["type"] = {"text": f"payer identifier (NM108 {nm1.get(8) or 'not sent'})"}
        org["identifier"] = [ident]
    return org


def _provider(party: _Party) -> Json:
    nm1 = party.require_nm1("the information receiver, 2100B")
    resource: Json
    if nm1.get(2) == "1":
        resource = {"resourceType": "Practitioner"}
        name = _human_name(nm1)
        if name:
            resource["name"] = [name]
    else:
        resource = {"resourceType": "Organization", "name": nm1.get(3) or "unnamed provider"}
        if nm1.get(1) == "FA":
            resource["type"] = [{"text": "Facility (NM101 FA)"}]
    qualifier, value = nm1.get(8), nm1.get(9)
    if value:
        ident: Json = {"value": value}
        if qualifier == "XX":
            ident["system"] = NPI_SYSTEM
        elif qualifier in _PROVIDER_ID_TYPES:
            code, display = _PROVIDER_ID_TYPES[qualifier]
            coding = {"system": V2_0203_SYSTEM, "code": code, "display": display}
            ident["type"] = {"coding": [coding]}
        else:
            ident["type"] = {"text": f"provider identifier (NM108 {qualifier or 'not sent'})"}
        resource["identifier"] = [ident]
    address = _address(party.n3, party.n4)
    if address:
        resource["address"] = [address]
    return resource


def _person(party: _Party, resource_type: str) -> Json:
    resource: Json = {"resourceType": resource_type}
    if party.nm1 is not None:
        name = _human_name(party.nm1)
        if name:
            resource["name"] = [name]
    dmg = party.dmg
    if dmg is not None:
        if dmg.get(1) == "D8" and dmg.get(2):
            resource["birthDate"] = read_d8(dmg, 2, dmg.get(2)).isoformat()
        if dmg.get(3) in _GENDERS:
            resource["gender"] = _GENDERS[dmg.get(3)]
    address = _address(party.n3, party.n4)
    if address:
        resource["address"] = [address]
    return resource


def _category(code: str) -> Json:
    meaning = codes.SERVICE_TYPES.get(code)
    x12: Json = {"system": X12_SERVICE_TYPE_SYSTEM, "code": code}
    if meaning:
        x12["display"] = meaning
    codings = [x12]
    if code in BENEFIT_CATEGORY_DISPLAY:
        display = BENEFIT_CATEGORY_DISPLAY[code]
        codings.insert(0, {"system": BENEFIT_CATEGORY_SYSTEM, "code": code, "display": display})
    category: Json = {"coding": codings}
    if meaning:
        category["text"] = meaning
    return category


def _serviced(seg: Segment) -> tuple[str, Any]:
    value = seg.get(3).strip()
    if seg.get(2) == "RD8":
        first, sep, last = value.partition("-")
        if not sep:
            raise X12Error(
                f"DTP03 {value!r} is not a CCYYMMDD-CCYYMMDD range",
                segment_id="DTP",
                position=seg.position,
                element=3,
            )
        start, end = read_d8(seg, 3, first), read_d8(seg, 3, last)
        return "servicedPeriod", {"start": start.isoformat(), "end": end.isoformat()}
    if seg.get(2) != "D8":
        raise X12Error(
            f"DTP02 {seg.get(2)!r} is not D8 or RD8",
            segment_id="DTP",
            position=seg.position,
            element=2,
        )
    return "servicedDate", read_d8(seg, 3, value).isoformat()


def _identifiers(traces: list[Segment], bht: Segment | None) -> list[Json]:
    out: list[Json] = []
    for trn in traces:
        if not trn.get(2):
            continue
        ident: Json = {"type": {"text": TRACE_TYPE_TEXT}, "value": trn.get(2)}
        if trn.get(3):
            ident["assigner"] = {
                "identifier": {"value": trn.get(3)},
                "display": "trace originator (TRN03)",
            }
        out.append(ident)
    if bht is not None and bht.get(3):
        out.append(
            {"type": {"text": "X12 270 BHT03 reference identification"}, "value": bht.get(3)}
        )
    return out


def _created(tx: Transaction, group: FunctionalGroup) -> str:
    bht = tx.body[0] if tx.body and tx.body[0].id == "BHT" else None
    if bht is not None and bht.get(4):
        return read_d8(bht, 4, bht.get(4)).isoformat()
    return read_d8(group.gs, 4, group.gs.get(4)).isoformat()


def _member_coverage(
    party: _Party,
    subscriber: _Party,
    member_id: str,
    *,
    patient: Json,
    insurer: Json,
    bundle: _Bundle,
    name: str,
) -> Json:
    """The Coverage a patient is asked about (``member_id`` from 2100C NM109; ``patient`` and
    ``insurer`` references), and for a dependent (2000D) the subscriber as a RelatedPerson with
    the relationship from 2100D INS02."""
    coverage: Json = {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": patient,
        "payor": [insurer],
    }
    if member_id:
        coverage["subscriberId"] = member_id
        member_type = {"system": V2_0203_SYSTEM, "code": "MB", "display": "Member Number"}
        coverage["identifier"] = [{"type": {"coding": [member_type]}, "value": member_id}]
    if subscriber is party:
        relationship, text = "self", "18 Self (subscriber, loop 2000C)"
    else:
        related = _person(subscriber, "RelatedPerson")
        related["patient"] = patient
        coverage["subscriber"] = bundle.add(f"{name}/subscriber", related)
        ins02 = party.ins.get(2) if party.ins is not None else ""
        relationship = _RELATIONSHIPS.get(ins02, "other")
        text = (
            f"{ins02} {codes.RELATIONSHIPS.get(ins02, 'unknown code')} (2100D INS02)"
            if ins02
            else "dependent (loop 2000D) without INS02"
        )
    coverage["relationship"] = {
        "coding": [{"system": RELATIONSHIP_SYSTEM, "code": relationship}],
        "text": text,
    }
    return coverage


def _patient_request(
    level: Level,
    parties: dict[int, _Party],
    key: str,
    bht: Segment | None,
    created: str,
    bundle: _Bundle,
) -> None:
    """Adds the CoverageEligibilityRequest of one patient (a 2000C or 2000D level) and what it
    references: the payer (2000A), the provider (2000B), the patient, the coverage."""
    party = parties[id(level)]
    chain = level.ancestors()
    source = next((lv for lv in chain if lv.code == "20"), None)
    receiver = next((lv for lv in chain if lv.code == "21"), None)
    if source is None or receiver is None:  # hierarchy() links 22 under 21 under 20
        raise X12Error(
            f"HL {level.id} has no information source or receiver above it",
            segment_id="HL",
            position=level.hl.position,
        )
    insurer = bundle.add(f"{key}/hl{source.id}/payer", _payer(parties[id(source)]))
    provider = bundle.add(f"{key}/hl{receiver.id}/provider", _provider(parties[id(receiver)]))
    name = f"{key}/hl{level.id}"
    patient = bundle.add(f"{name}/patient", _person(party, "Patient"))
    subscriber = parties[id(level.parent)] if level.code == "23" and level.parent else party
    member_id = subscriber.nm1.get(9) if subscriber.nm1 is not None else ""
    traces = party.traces or (subscriber.traces if subscriber is not party else [])
    request: Json = {"resourceType": "CoverageEligibilityRequest"}
    identifiers = _identifiers(traces, bht)
    if identifiers:
        request["identifier"] = identifiers
    request.update(
        {
            "status": "active",
            "purpose": ["validation", "benefits"],
            "patient": patient,
            "created": created,
            "provider": provider,
            "insurer": insurer,
        }
    )
    if party.service is not None:
        element, value = _serviced(party.service)
        request[element] = value
    if subscriber is not party or member_id:
        coverage = _member_coverage(
            party, subscriber, member_id, patient=patient, insurer=insurer, bundle=bundle, name=name
        )
        request["insurance"] = [
            {"focal": True, "coverage": bundle.add(f"{name}/coverage", coverage)}
        ]
    if party.service_types:
        request["item"] = [{"category": _category(c)} for c in party.service_types]
    bundle.add(f"{name}/request", request)


def _transaction(
    interchange: Interchange,
    group: FunctionalGroup,
    tx: Transaction,
    bundle: _Bundle,
    warnings: list[str],
) -> int:
    """Adds the requests of one 270 transaction set; returns how many."""
    if tx.id != "270":
        raise X12Error(
            f"ST01 {tx.id!r} is not 270", segment_id="ST", position=tx.st.position, element=1
        )
    eligibility_version(group, tx, warnings)
    body = tx.body
    bht = body[0] if body and body[0].id == "BHT" else None
    if bht is None:
        warnings.append(f"{tx.st.where()}: no BHT after ST")
    created = _created(tx, group)
    levels = hierarchy(tx, warnings)
    parties = {id(level): _Party(level, warnings) for level in levels}
    for level in levels:
        asked = parties[id(level)]
        if level.code == "22" and level.children and (asked.service_types or asked.service):
            warnings.append(
                f"{level.hl.where()}: the EQ/DTP*291 of a subscriber with dependents (loop "
                "2000C) are not carried into FHIR: the dependents are the patients; passed over"
            )
    key = f"{interchange.sender_id}/{interchange.control_number}/{tx.control_number}"
    patients = [
        level
        for level in levels
        if level.code == "23" or (level.code == "22" and not level.children)
    ]
    for level in patients:
        _patient_request(level, parties, key, bht, created, bundle)
    if not patients:
        warnings.append(f"{tx.st.where()}: the 270 asks about no patient (no 2000C or 2000D)")
    return len(patients)


def x270_to_fhir(
    source: str | bytes | Interchange,
    *,
    strict: bool = False,
    warnings: list[str] | None = None,
) -> Json:
    """The Bundle (type ``collection``) for every 270 transaction set in ``source``.

    Read leniently unless ``strict`` (envelope count and control-number faults become
    warnings, as for a 271). Warnings (the envelope's, the hierarchy's, each segment passed
    over) are appended to ``warnings`` when a list is given. Raises
    :class:`~engine.x12.errors.X12Error` naming the segment and element for a transaction set
    that is not a 270, a hierarchy that does not link up, a date that cannot be read.
    """
    interchanges = (
        [source] if isinstance(source, Interchange) else parse_interchanges(source, strict=strict)
    )
    notes: list[str] = [] if warnings is None else warnings
    bundle = _Bundle()
    for interchange in interchanges:
        notes.extend(interchange.warnings)
        for group in interchange.groups:
            for tx in group.transactions:
                _transaction(interchange, group, tx, bundle, notes)
    # requests first, then what they reference, for a reader of the Bundle
    entries = sorted(
        bundle.entries,
        key=lambda e: e["resource"]["resourceType"] != "CoverageEligibilityRequest",
    )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
