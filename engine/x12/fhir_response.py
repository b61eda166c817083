"""X12 271 → a FHIR R4 Bundle (type ``collection``) of CoverageEligibilityResponses.

One CoverageEligibilityResponse per :class:`~engine.x12.x271.EligibilityResult` (a subscriber or a
dependent the payer answered about); a 271 rejected above the patient level (2000A/2100A/2100B
AAA, no subscriber loop) gives one response with ``outcome`` error. Beside them the Bundle holds
what the responses point at and the caller did not name: the payer Organization (2100A, its
payer ID typed v2-0203 NIIP as the HL7v2 IN1 mapping writes it), a Patient (the 2100C/D name,
birth date, gender, address) and a Coverage (member ID, payer, relationship, plan, plan dates).
Full URLs are ``urn:uuid:`` UUIDs derived from the interchange, transaction and HL numbers, so the
same 271 always gives the same Bundle.

=====================  ======================================================================
FHIR                   271
=====================  ======================================================================
status, purpose        ``active``, ``[benefits]``
patient, request       the caller's references for the result whose echoed TRN02 (TRN01 = 2)
                       equals ``trace`` (or the only result when ``trace`` is not given);
                       otherwise the Patient in the Bundle, and a request reference by
                       identifier: the echoed trace number
requestor              2100B: a reference by NPI identifier (NM108 XX), else by display
created                ``created`` if given, else BHT04 (a date: BHT05 has no time zone)
outcome                ``error`` when an AAA applies above the benefit level (the payer gave
                       no eligibility), ``partial`` when only 2110 benefit AAAs, else
                       ``complete``
disposition            a sentence: coverage active/inactive and the plan, or the rejections
error[].code           AAA03 (system :data:`X12_REJECT_REASON_SYSTEM`), text: the loop, the
                       meaning and AAA04's follow-up action
insurance.inforce      EB01 1-5 → true, 6-8 → false (any active EB wins)
insurance.benefitPeriod DTP 346/347 plan begin/end, else 291 plan range, else 356/357
insurance.item         one per EB03 service type (EB03 repeats), merged when the service type,
                       EB12 network, EB02 unit, EB06 term, EB04, EB05, EB11 and exclusion agree
item.category          EB03: the X12 service type coding, plus ex-benefitcategory when the code
                       is one of its 28; no EB03 → text only
item.name/description  EB05 plan name / EB04 insurance type, MSG texts, 2120 entities
item.network           EB12 Y → benefit-network ``in``, N → ``out`` (+ the X12 coding; W, U
                       X12 only)
item.unit              EB02 IND → ``individual``, FAM → ``family`` (+ X12 coverage level)
item.term              EB06 (X12 time period; 23/22 also benefit-term ``annual``, 7 ``day``,
                       32 ``lifetime``)
item.excluded          EB01 E (exclusions) or I (non-covered)
item.authorizationRequired  EB11 Y/N
item.provider          the first 2120 entity (by NPI when NM108 XX), e.g. EB01 L's PCP
benefit.type           the X12 EB01 coding, plus benefit-type ``copay`` (B), ``deductible`` (C),
                       ``copay-percent`` (A, co-insurance); G (out of pocket) and the rest have
                       no benefit-type code and carry the X12 one only
benefit.allowedMoney   EB07 (USD)
benefit.allowed…       EB08 percent: a decimal fraction in X12 (``.2``), a whole percent in FHIR:
                       allowedUnsignedInt 20; a fractional percent (``.125``) → allowedString
                       ``12.5%``
benefit.allowed/used   EB10 quantity: EB09 99 (quantity used) → usedUnsignedInt, any other EB09
UnsignedInt            → allowedUnsignedInt (allowedString when not a whole number)
=====================  ======================================================================

Remaining amounts: EB06 29 (Remaining) or 33 (Lifetime Remaining) says EB07 is what is *left*.
FHIR has no "remaining" element, so such an amount is ``allowedMoney`` of an item whose ``term``
is X12 29/33 "Remaining", in its own item (term is part of the item key), and the benefit type's
text says "remaining" (``Deductible (remaining)``). It is never turned into ``usedMoney``: used =
total − remaining would be our arithmetic over two statements the payer may base on different
accumulators, not something the payer said. ``used[x]`` comes only from EB09 99.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from engine.x12.codes import Code
from engine.x12.envelope import Interchange, parse_interchanges
from engine.x12.fhir_terms import (
    BENEFIT_CATEGORY_DISPLAY,
    BENEFIT_CATEGORY_SYSTEM,
    BENEFIT_NETWORK_SYSTEM,
    BENEFIT_TERM_SYSTEM,
    BENEFIT_TYPE_SYSTEM,
    BENEFIT_UNIT_SYSTEM,
    COVERAGE_CLASS_SYSTEM,
    NPI_SYSTEM,
    RELATIONSHIP_SYSTEM,
    TRACE_TYPE_TEXT,
    V2_0203_SYSTEM,
    X12_COVERAGE_LEVEL_SYSTEM,
    X12_ELIGIBILITY_SYSTEM,
    X12_NETWORK_SYSTEM,
    X12_QUANTITY_SYSTEM,
    X12_REJECT_REASON_SYSTEM,
    X12_SERVICE_TYPE_SYSTEM,
    X12_TIME_PERIOD_SYSTEM,
)
from engine.x12.loops import eligibility_version
from engine.x12.x271 import (
    Benefit,
    EligibilityResponse,
    EligibilityResult,
    Entity,
    RequestError,
    read_271_transaction,
)

__all__ = ["x271_to_fhir"]

Json = dict[str, Any]
_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:engine:x12:271")
_BENEFIT_TYPES = {
    "B": ("copay", "Copayment per service"),
    "C": ("deductible", "Deductible"),
    "A": ("copay-percent", "Copayment Percent per service"),
}
_TERMS = {"7": "day", "22": "annual", "23": "annual", "32": "lifetime"}
_UNITS = {"IND": "individual", "FAM": "family"}
_NETWORKS = {"Y": ("in", "In Network"), "N": ("out", "Out of Network")}
_RELATIONSHIPS = {"18": "self", "01": "spouse", "19": "child"}
_GENDERS = {"M": "male", "F": "female", "U": "unknown"}
_REMAINING = frozenset(("29", "33"))


def _coding(system: str, code: Code | str, display: str | None = None) -> Json:
    if isinstance(code, Code):
        return {"system": system, "code": code.code, "display": display or code.meaning}
    out: Json = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _entity_ref(entity: Entity | None, fallback: str) -> Json:
    if entity is None:
        return {"display": fallback}
    ref: Json = {"display": entity.name or fallback}
    if entity.id_qualifier == "XX" and entity.id:
        ref["identifier"] = {"system": NPI_SYSTEM, "value": entity.id}
    return ref


class _Builder:
    """Collects the Bundle's entries; keeps full URLs stable per interchange and transaction."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.entries: list[Json] = []
        self.urls: dict[str, str] = {}

    def add(self, name: str, resource: Json) -> str:
        if name in self.urls:
            return self.urls[name]
        url = f"urn:uuid:{uuid.uuid5(_NS, f'{self.key}/{name}')}"
        self.urls[name] = url
        self.entries.append({"fullUrl": url, "resource": resource})
        return url


def _payer(entity: Entity) -> Json:
    org: Json = {"resourceType": "Organization", "name": entity.name or "unnamed payer"}
    if entity.id:
        ident: Json = {"value": entity.id}
        if entity.id_qualifier == "PI":
            ident["type"] = {"coding": [_coding(V2_0203_SYSTEM, "NIIP")]}
        org["identifier"] = [ident]
    org["type"] = [
        {
            "coding": [
                _coding("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")
            ]
        }
    ]
    return org


def _patient(result: EligibilityResult) -> Json:
    patient: Json = {"resourceType": "Patient"}
    person = result.person
    if person is not None and (person.last_name or person.first_name):
        name: Json = {}
        if person.last_name:
            name["family"] = person.last_name
        given = [g for g in (person.first_name, person.middle_name) if g]
        if given:
            name["given"] = given
        if person.suffix:
            name["suffix"] = [person.suffix]
        patient["name"] = [name]
    if result.birth_date is not None:
        patient["birthDate"] = result.birth_date.isoformat()
    if result.gender is not None and result.gender.code in _GENDERS:
        patient["gender"] = _GENDERS[result.gender.code]
    if person is not None and person.address is not None:
        a = person.address
        address: Json = {}
        lines = [x for x in (a.line1, a.line2) if x]
        if lines:
            address["line"] = lines
        for key, value in (
            ("city", a.city),
            ("state", a.state),
            ("postalCode", a.postal_code),
            ("country", a.country),
        ):
            if value:
                address[key] = value
        if address:
            patient["address"] = [address]
    return patient


def _period(result: EligibilityResult) -> Json | None:
    by = {d.qualifier.code: d for d in result.dates}
    for begin, finish in (("346", "347"), ("356", "357")):
        if begin in by or finish in by:
            period: Json = {}
            if begin in by:
                period["start"] = by[begin].start.isoformat()
            if finish in by:
                period["end"] = by[finish].start.isoformat()
            return period
    for qualifier in ("291", "307"):
        if qualifier in by:
            d = by[qualifier]
            period = {"start": d.start.isoformat()}
            if d.end is not None:
                period["end"] = d.end.isoformat()
            return period
    return None


def _coverage(result: EligibilityResult, patient_ref: Json, insurer_ref: Json) -> Json:
    coverage: Json = {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": patient_ref,
        "payor": [insurer_ref],
    }
    subscriber_id = result.subscriber.id if result.subscriber else result.member_id
    if subscriber_id:
        coverage["subscriberId"] = subscriber_id
    if result.member_id:
        coverage["identifier"] = [
            {
                "type": {"coding": [_coding(V2_0203_SYSTEM, "MB", "Member Number")]},
                "value": result.member_id,
            }
        ]
    rel = result.relationship
    if rel is not None:
        code = _RELATIONSHIPS.get(rel.code, "other")
        coverage["relationship"] = {
            "coding": [_coding(RELATIONSHIP_SYSTEM, code)],
            "text": str(rel),
        }
    classes: list[Json] = []
    refs = {r.qualifier: r for e in (result.subscriber, result.person) if e for r in e.references}
    plan = result.plan
    if "18" in refs or plan:
        value = refs["18"].value if "18" in refs else plan
        cls: Json = {"type": {"coding": [_coding(COVERAGE_CLASS_SYSTEM, "plan")]}, "value": value}
        if plan:
            cls["name"] = plan
        classes.append(cls)
    if "6P" in refs:
        group = refs["6P"]
        cls = {"type": {"coding": [_coding(COVERAGE_CLASS_SYSTEM, "group")]}, "value": group.value}
        if group.description:
            cls["name"] = group.description
        classes.append(cls)
    if classes:
        coverage["class"] = classes
    period = _period(result)
    if period:
        coverage["period"] = period
    return coverage


def _percent_value(percent: Decimal) -> tuple[str, Any]:
    whole = percent * 100
    if whole == whole.to_integral_value() and whole >= 0:
        return "UnsignedInt", int(whole)
    return "String", f"{whole.normalize():f}%"


def _benefits(benefit: Benefit) -> list[Json]:
    info = benefit.info
    remaining = benefit.time_period is not None and benefit.time_period.code in _REMAINING
    codings = []
    if info.code in _BENEFIT_TYPES:
        code, display = _BENEFIT_TYPES[info.code]
        codings.append(_coding(BENEFIT_TYPE_SYSTEM, code, display))
    codings.append(_coding(X12_ELIGIBILITY_SYSTEM, info))
    text = f"{info.meaning} (remaining)" if remaining else info.meaning
    out: list[Json] = []
    if benefit.amount is not None:
        money = {"value": _number(benefit.amount), "currency": "USD"}
        out.append({"type": {"coding": codings, "text": text}, "allowedMoney": money})
    if benefit.percent is not None:
        kind, value = _percent_value(benefit.percent)
        out.append(
            {"type": {"coding": codings, "text": f"{text}, percent"}, f"allowed{kind}": value}
        )
    if benefit.quantity is not None:
        qualifier = benefit.quantity_qualifier
        q_codings = [*codings]
        q_text = text
        if qualifier is not None:
            q_codings.append(_coding(X12_QUANTITY_SYSTEM, qualifier))
            q_text = f"{text}, {qualifier.meaning}"
        quantity = benefit.quantity
        if quantity == quantity.to_integral_value() and quantity >= 0:
            kind, value = "UnsignedInt", int(quantity)
        else:
            kind, value = "String", f"{quantity.normalize():f}"
        which = "used" if qualifier is not None and qualifier.code == "99" else "allowed"
        out.append({"type": {"coding": q_codings, "text": q_text}, f"{which}{kind}": value})
    if not out and benefit.active is None:
        out.append({"type": {"coding": codings, "text": text}})
    return out


def _category(service_type: Code | None) -> Json:
    if service_type is None:
        return {"text": "no service type (EB03 not sent): the plan in general"}
    codings = [_coding(X12_SERVICE_TYPE_SYSTEM, service_type)]
    if service_type.code in BENEFIT_CATEGORY_DISPLAY:
        display = BENEFIT_CATEGORY_DISPLAY[service_type.code]
        codings.insert(0, _coding(BENEFIT_CATEGORY_SYSTEM, service_type.code, display))
    return {"coding": codings, "text": service_type.meaning}


def _item_head(benefit: Benefit, service_type: Code | None) -> Json:
    item: Json = {"category": _category(service_type)}
    if benefit.info.code in ("E", "I"):
        item["excluded"] = True
    if benefit.plan_name:
        item["name"] = benefit.plan_name
    notes = []
    if benefit.insurance_type is not None:
        notes.append(f"Insurance type: {benefit.insurance_type}")
    notes += benefit.messages
    notes += [f"{e.entity.meaning}: {e.name}" for e in benefit.entities]
    if notes:
        item["description"] = "; ".join(notes)
    if benefit.network is not None:
        codings = [_coding(X12_NETWORK_SYSTEM, benefit.network)]
        if benefit.network.code in _NETWORKS:
            code, display = _NETWORKS[benefit.network.code]
            codings.insert(0, _coding(BENEFIT_NETWORK_SYSTEM, code, display))
        item["network"] = {"coding": codings, "text": benefit.network.meaning}
    if benefit.coverage_level is not None:
        level = benefit.coverage_level
        codings = [_coding(X12_COVERAGE_LEVEL_SYSTEM, level)]
        if level.code in _UNITS:
            codings.insert(0, _coding(BENEFIT_UNIT_SYSTEM, _UNITS[level.code]))
        item["unit"] = {"coding": codings, "text": level.meaning}
    if benefit.time_period is not None:
        period = benefit.time_period
        codings = [_coding(X12_TIME_PERIOD_SYSTEM, period)]
        if period.code in _TERMS:
            codings.insert(0, _coding(BENEFIT_TERM_SYSTEM, _TERMS[period.code]))
        item["term"] = {"coding": codings, "text": period.meaning}
    if benefit.authorization_required is not None:
        item["authorizationRequired"] = benefit.authorization_required
    if benefit.entities:
        item["provider"] = _entity_ref(benefit.entities[0], "related entity")
    return item


def _items(result: EligibilityResult) -> list[Json]:
    items: dict[tuple[Any, ...], Json] = {}
    for benefit in result.benefits:
        values = _benefits(benefit)
        service_types: list[Code | None] = [*benefit.service_types] or [None]
        for service_type in service_types:
            head = _item_head(benefit, service_type)
            key = tuple(
                repr(head.get(k))
                for k in (
                    "category",
                    "excluded",
                    "name",
                    "description",
                    "network",
                    "unit",
                    "term",
                    "authorizationRequired",
                    "provider",
                )
            )
            item = items.setdefault(key, head)
            if values:
                item.setdefault("benefit", []).extend(values)
    return list(items.values())


def _error(err: RequestError) -> Json:
    follow = f"; follow-up {err.follow_up}" if err.follow_up else ""
    validity = "" if err.valid_request else " (request invalid)"
    return {
        "code": {
            "coding": [_coding(X12_REJECT_REASON_SYSTEM, err.reason)],
            "text": f"{err.loop}: {err.reason.meaning}{validity}{follow}",
        }
    }


def _disposition(result: EligibilityResult | None, errors: list[RequestError]) -> str:
    blocking = [e for e in errors if not e.loop.startswith("2110")]
    if blocking:
        return "The payer could not answer: " + "; ".join(str(e) for e in blocking)
    if result is None:
        return "The 271 names no patient"
    state = {True: "Coverage active", False: "Coverage inactive", None: "Eligibility returned"}
    text = state[result.active]
    if result.plan:
        text += f" ({result.plan})"
    if errors:
        text += "; benefit-level rejections: " + "; ".join(str(e) for e in errors)
    return text


def _outcome(errors: list[RequestError]) -> str:
    if any(not e.loop.startswith("2110") for e in errors):
        return "error"
    return "partial" if errors else "complete"


def _convert(
    response: EligibilityResponse,
    builder: _Builder,
    refs: dict[str, Json | None],
    trace: str | None,
    created: str,
) -> None:
    insurer_ref = refs["insurer"]
    if insurer_ref is None:
        if response.payer is not None:
            insurer_ref = {"reference": builder.add("payer", _payer(response.payer))}
        else:
            insurer_ref = {"display": "unknown payer (the 271 has no 2100A)"}
    results: Sequence[EligibilityResult | None] = response.results or [None]
    for result in results:
        if result is None:
            mine = trace is None
        else:
            mine = result.matches(trace) if trace else len(response.results) == 1
        name = f"hl{result.hl_id}" if result is not None else "none"
        patient_ref = refs["patient"] if mine else None
        if patient_ref is None:
            if result is None:
                patient_ref = {"display": "unknown patient (the 271 has no subscriber loop)"}
            else:
                patient_ref = {"reference": builder.add(f"{name}/patient", _patient(result))}
        request_ref = refs["request"] if mine else None
        echoed = [t for t in result.traces if t.echoed] if result is not None else []
        if request_ref is None:
            if echoed:
                request_ref = {
                    "identifier": {"type": {"text": TRACE_TYPE_TEXT}},
                    "display": f"the 270 with trace number {echoed[0].number}",
                }
                request_ref["identifier"]["value"] = echoed[0].number
            else:
                request_ref = {"display": "the 270 this 271 answers (no trace number echoed)"}
        errors = result.errors if result is not None else response.errors
        resource: Json = {
            "resourceType": "CoverageEligibilityResponse",
            "status": "active",
            "purpose": ["benefits"],
            "patient": patient_ref,
            "created": created,
            "request": request_ref,
            "outcome": _outcome(errors),
            "disposition": _disposition(result, errors),
            "insurer": insurer_ref,
        }
        if result is not None:
            own = [t for t in result.traces if not t.echoed]
            if own:
                resource["identifier"] = [
                    {"type": {"text": "payer trace number (TRN02)"}, "value": t.number} for t in own
                ]
            resource["requestor"] = _entity_ref(result.receiver, "the provider who asked")
            if result.benefits:
                coverage_ref = refs["coverage"] if mine else None
                if coverage_ref is None:
                    coverage = _coverage(result, patient_ref, insurer_ref)
                    coverage_ref = {"reference": builder.add(f"{name}/coverage", coverage)}
                insurance: Json = {"coverage": coverage_ref}
                if result.active is not None:
                    insurance["inforce"] = result.active
                period = _period(result)
                if period:
                    insurance["benefitPeriod"] = period
                items = _items(result)
                if items:
                    insurance["item"] = items
                resource["insurance"] = [insurance]
        if errors:
            resource["error"] = [_error(e) for e in errors]
        builder.add(f"{name}/response", resource)


def _ref(value: str | None) -> Json | None:
    return {"reference": value} if value else None


def x271_to_fhir(
    source: str | bytes | Interchange,
    *,
    request: str | None = None,
    patient: str | None = None,
    coverage: str | None = None,
    insurer: str | None = None,
    trace: str | None = None,
    created: datetime | None = None,
    strict: bool = False,
    warnings: list[str] | None = None,
) -> Json:
    """The Bundle (type ``collection``) for a 271 (see the module table).

    ``request``, ``patient``, ``coverage`` are references (``CoverageEligibilityRequest/123``)
    used for the result that answers the 270 whose TRN02 was ``trace`` (the only result when
    ``trace`` is None); ``insurer`` (``Organization/p1``) is used for every response. ``created``
    (timezone-aware) stamps the responses and the Bundle; otherwise BHT04's date is used.

    The 271 is read leniently unless ``strict`` (as :func:`engine.x12.x271.read_271` reads it):
    envelope faults and what the reader passed over are appended to ``warnings`` when a list is
    given, each naming its segment. Raises :class:`~engine.x12.errors.X12Error` as
    :func:`~engine.x12.x271.read_271` does.
    """
    interchanges = (
        [source] if isinstance(source, Interchange) else parse_interchanges(source, strict=strict)
    )
    notes: list[str] = [] if warnings is None else warnings
    bundle: Json = {"resourceType": "Bundle", "type": "collection"}
    if created is not None:
        bundle["timestamp"] = created.isoformat()
    entries: list[Json] = []
    for interchange in interchanges:
        notes.extend(interchange.warnings)
        for group in interchange.groups:
            for tx in group.transactions:
                if tx.id == "271":
                    eligibility_version(group, tx, notes)
                response = read_271_transaction(tx, notes)
                key = f"{interchange.sender_id}/{interchange.control_number}/{tx.control_number}"
                builder = _Builder(key)
                when = created.isoformat() if created is not None else None
                if when is None:
                    stamp = response.created
                    when = stamp.date().isoformat() if stamp else datetime.now().date().isoformat()
                refs = {
                    "request": _ref(request),
                    "patient": _ref(patient),
                    "coverage": _ref(coverage),
                    "insurer": _ref(insurer),
                }
                _convert(response, builder, refs, trace, when)
                entries.extend(builder.entries)
    bundle["entry"] = entries
    return bundle
