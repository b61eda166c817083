"""FHIR R4 CoverageEligibilityRequest → X12 270 (005010X279A1).

:func:`request_to_inquiry` reads the request and the resources it references into an
:class:`~engine.x12.x270.EligibilityInquiry`; :func:`coverage_eligibility_request_to_270` builds
the 270 from it. The input is a Bundle, a list of resources, or one CoverageEligibilityRequest
whose references point at contained resources; references are resolved by ``Type/id``, by an
entry's ``fullUrl`` (``urn:uuid:...`` or an absolute URL ending in ``Type/id``) and by ``#id``
for contained resources. Where each 270 element comes from:

==========================  ================================================================
270                         CoverageEligibilityRequest
==========================  ================================================================
2100A NM1*PR name, PI id    ``insurer`` → Organization: ``name``; the payer ID is the
                            identifier typed v2-0203 ``NIIP`` (as the HL7v2 IN1-3 mapping
                            writes it), else the only identifier
2100B NM1*1P, XX NPI        ``provider`` → Organization or Practitioner (a PractitionerRole:
                            its practitioner, else its organization) with an identifier of
                            system ``http://hl7.org/fhir/sid/us-npi``
2100C NM1*IL, MI member ID  ``insurance`` (the ``focal`` one, else the first) → Coverage:
                            ``subscriberId`` (else its identifier typed ``MB``); when the
                            relationship is ``self`` (or absent) the patient is the subscriber,
                            otherwise ``Coverage.subscriber`` is (2100C) and the patient is the
                            dependent (2100D)
NM1 names, DMG, N3/N4       Patient / RelatedPerson: the ``official`` name (else the first),
                            ``birthDate``, ``gender`` (male → M, female → F), the ``home``
                            address (else the first)
DTP*291                     ``servicedDate``, or ``servicedPeriod`` (RD8)
EQ01                        ``item.category`` codings of system
                            ``https://x12.org/codes/service-type-codes`` or ``ex-benefitcategory``
                            (whose numeric codes are X12 service types); none → 30
TRN02                       ``trace_number`` if given, else the first ``identifier.value``, else
                            ``id``: the 271 echoes it, which is how its answer finds this request
==========================  ================================================================

A missing or unusable piece raises :class:`~engine.errors.ConversionError` naming the element
(``CoverageEligibilityRequest.provider: Practitioner/p1 has no NPI ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from engine.errors import ConversionError
from engine.x12.fhir_terms import (
    BENEFIT_CATEGORY_SYSTEM,
    NPI_SYSTEM,
    V2_0203_SYSTEM,
    X12_SERVICE_TYPE_SYSTEM,
)
from engine.x12.x270 import (
    Address,
    EligibilityInquiry,
    Payer,
    Person,
    Provider,
    build_270,
)

__all__ = ["coverage_eligibility_request_to_270", "request_to_inquiry"]

Resource = dict[str, Any]
_GENDERS = {"male": "M", "female": "F"}


class _Resolver:
    """Finds the resources that references point at."""

    def __init__(self, resources: Sequence[tuple[str, Resource]]) -> None:
        self.index: dict[str, Resource] = {}
        for full_url, res in resources:
            rtype, rid = res.get("resourceType"), res.get("id")
            if full_url:
                self.index[full_url] = res
                tail = "/".join(full_url.rstrip("/").split("/")[-2:])
                self.index.setdefault(tail, res)
            if rtype and rid:
                self.index.setdefault(f"{rtype}/{rid}", res)
            for inner in res.get("contained", []) or []:
                if isinstance(inner, dict) and inner.get("id"):
                    self.index.setdefault(f"#{inner['id']}", inner)

    def get(self, ref: Any, where: str, *types: str) -> Resource:
        if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
            raise ConversionError(f"{where}: no reference to a {' or '.join(types)}")
        target = ref["reference"]
        res = self.index.get(target) or self.index.get("/".join(target.split("/")[-2:]))
        if res is None:
            raise ConversionError(f"{where}: {target!r} is not in the bundle")
        if types and res.get("resourceType") not in types:
            raise ConversionError(
                f"{where}: {target!r} is a {res.get('resourceType')}, not a {' or '.join(types)}"
            )
        return res

    def find(self, ref: Any) -> Resource | None:
        if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
            return None
        target = ref["reference"]
        return self.index.get(target) or self.index.get("/".join(target.split("/")[-2:]))


def _collect(data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[tuple[str, Resource]]:
    if isinstance(data, Mapping):
        if data.get("resourceType") == "Bundle":
            return [
                (str(e.get("fullUrl") or ""), dict(e["resource"]))
                for e in data.get("entry", []) or []
                if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
            ]
        return [("", dict(data))]
    return [("", dict(r)) for r in data]


def _label(res: Resource) -> str:
    return f"{res.get('resourceType')}/{res.get('id', '?')}"


def _has_type(ident: Mapping[str, Any], code: str) -> bool:
    codings = (ident.get("type") or {}).get("coding", []) or []
    return any(c.get("code") == code and c.get("system") in (None, V2_0203_SYSTEM) for c in codings)


def _payer_id(org: Resource) -> str:
    idents = [i for i in org.get("identifier", []) or [] if i.get("value")]
    typed = [i for i in idents if _has_type(i, "NIIP")]
    if typed:
        return str(typed[0]["value"])
    if len(idents) == 1:
        return str(idents[0]["value"])
    raise ConversionError(
        f"CoverageEligibilityRequest.insurer: {_label(org)} has {len(idents)} identifiers and "
        "none typed NIIP (v2-0203), so its payer ID is unknown"
    )


def _npi(res: Resource) -> str | None:
    for ident in res.get("identifier", []) or []:
        if ident.get("system") == NPI_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None


def _human_name(res: Resource) -> dict[str, Any]:
    names = res.get("name", []) or []
    official = [n for n in names if n.get("use") == "official"]
    return (official or names or [{}])[0]  # type: ignore[no-any-return]


def _address(res: Resource) -> Address | None:
    addresses = res.get("address", []) or []
    home = [a for a in addresses if a.get("use") == "home"]
    chosen = (home or addresses or [None])[0]
    if not chosen or not chosen.get("line"):
        return None
    lines = list(chosen.get("line") or [])
    return Address(
        line1=str(lines[0]),
        line2=" ".join(str(x) for x in lines[1:]),
        city=str(chosen.get("city") or ""),
        state=str(chosen.get("state") or ""),
        postal_code=str(chosen.get("postalCode") or ""),
        country=str(chosen.get("country") or ""),
    )


def _birth_date(res: Resource) -> date | None:
    value = res.get("birthDate")
    if not value:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ConversionError(
            f"{_label(res)}.birthDate {value!r} is not a full date; a 270 needs CCYYMMDD"
        ) from None


def _person(res: Resource | None, member_id: str = "") -> Person:
    if res is None:
        return Person(member_id=member_id)
    name = _human_name(res)
    given = [str(g) for g in name.get("given", []) or []]
    return Person(
        last_name=str(name.get("family") or ""),
        first_name=given[0] if given else "",
        middle_name=" ".join(given[1:]),
        suffix=str((name.get("suffix") or [""])[0]),
        member_id=member_id,
        birth_date=_birth_date(res),
        gender=_GENDERS.get(str(res.get("gender") or ""), ""),
        address=_address(res),
    )


def _provider(resolver: _Resolver, request: Resource) -> Provider:
    where = "CoverageEligibilityRequest.provider"
    res = resolver.get(
        request.get("provider"), where, "Organization", "Practitioner", "PractitionerRole"
    )
    if res["resourceType"] == "PractitionerRole":
        candidates = [
            resolver.find(res.get("practitioner")),
            resolver.find(res.get("organization")),
        ]
        with_npi = [c for c in candidates if c is not None and _npi(c)]
        if not with_npi:
            raise ConversionError(
                f"{where}: {_label(res)} has no practitioner or organization with an NPI "
                f"(identifier system {NPI_SYSTEM})"
            )
        res = with_npi[0]
    npi = _npi(res)
    if not npi:
        raise ConversionError(f"{where}: {_label(res)} has no NPI (identifier system {NPI_SYSTEM})")
    if res["resourceType"] == "Organization":
        return Provider(npi=npi, organization=str(res.get("name") or ""))
    name = _human_name(res)
    given = [str(g) for g in name.get("given", []) or []]
    return Provider(
        npi=npi, last_name=str(name.get("family") or ""), first_name=given[0] if given else ""
    )


def _member_id(coverage: Resource) -> str:
    if coverage.get("subscriberId"):
        return str(coverage["subscriberId"])
    for ident in coverage.get("identifier", []) or []:
        if ident.get("value") and _has_type(ident, "MB"):
            return str(ident["value"])
    return ""


def _service_types(request: Resource) -> tuple[str, ...]:
    out: list[str] = []
    for n, item in enumerate(request.get("item", []) or []):
        codings = (item.get("category") or {}).get("coding", []) or []
        for coding in codings:
            system, code = coding.get("system"), str(coding.get("code") or "")
            if system not in (X12_SERVICE_TYPE_SYSTEM, BENEFIT_CATEGORY_SYSTEM) or not code:
                continue
            if system == BENEFIT_CATEGORY_SYSTEM and code.startswith("F"):
                raise ConversionError(
                    f"CoverageEligibilityRequest.item[{n}].category: ex-benefitcategory {code} "
                    "has no X12 service type; ask with a service type code instead"
                )
            if code not in out:
                out.append(code)
            break
    return tuple(out) or ("30",)


def _service_dates(request: Resource) -> tuple[date | None, date | None]:
    def parse(value: Any, element: str) -> date:
        try:
            return date.fromisoformat(str(value)[:10])
        except ValueError:
            raise ConversionError(
                f"CoverageEligibilityRequest.{element} {value!r} is not a date"
            ) from None

    if request.get("servicedDate"):
        return parse(request["servicedDate"], "servicedDate"), None
    period = request.get("servicedPeriod") or {}
    if period.get("start"):
        start = parse(period["start"], "servicedPeriod.start")
        end = parse(period["end"], "servicedPeriod.end") if period.get("end") else None
        return start, end if end != start else None
    return None, None


def request_to_inquiry(
    data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    originator_id: str,
    trace_number: str | None = None,
    request_id: str | None = None,
) -> EligibilityInquiry:
    """The eligibility question a CoverageEligibilityRequest asks (see the module table).

    ``originator_id`` is TRN03 (``1`` + the practice's EIN, 10 characters). ``request_id``
    picks one request when the input holds several.
    """
    resources = _collect(data)
    requests = [
        r
        for _, r in resources
        if r.get("resourceType") == "CoverageEligibilityRequest"
        and (request_id is None or r.get("id") == request_id)
    ]
    if len(requests) != 1:
        which = f" with id {request_id!r}" if request_id else ""
        raise ConversionError(
            f"expected one CoverageEligibilityRequest{which}, found {len(requests)}"
        )
    request = requests[0]
    resolver = _Resolver(resources)
    patient = resolver.get(request.get("patient"), "CoverageEligibilityRequest.patient", "Patient")
    insurer = resolver.get(
        request.get("insurer"), "CoverageEligibilityRequest.insurer", "Organization"
    )
    insurances = request.get("insurance", []) or []
    focal = [i for i in insurances if i.get("focal")] or insurances
    coverage = (
        resolver.get(
            focal[0].get("coverage"), "CoverageEligibilityRequest.insurance.coverage", "Coverage"
        )
        if focal
        else None
    )
    member_id = _member_id(coverage) if coverage else ""
    relationship = ""
    if coverage is not None:
        codings = (coverage.get("relationship") or {}).get("coding", []) or []
        relationship = str(codings[0].get("code") or "") if codings else ""
    subscriber_res = resolver.find(coverage.get("subscriber")) if coverage else None
    is_dependent = relationship not in ("", "self") and subscriber_res is not patient
    if is_dependent:
        subscriber = _person(subscriber_res, member_id)
        dependent: Person | None = _person(patient)
    else:
        subscriber, dependent = _person(patient, member_id), None
    trace = trace_number or next(
        (str(i["value"]) for i in request.get("identifier", []) or [] if i.get("value")),
        str(request.get("id") or ""),
    )
    if not trace:
        raise ConversionError(
            "CoverageEligibilityRequest has no identifier or id to use as the 270 trace number"
        )
    start, end = _service_dates(request)
    return EligibilityInquiry(
        payer=Payer(name=str(insurer.get("name") or ""), payer_id=_payer_id(insurer)),
        provider=_provider(resolver, request),
        subscriber=subscriber,
        dependent=dependent,
        trace_number=trace,
        originator_id=originator_id,
        service_date=start,
        service_date_end=end,
        service_types=_service_types(request),
    )


def coverage_eligibility_request_to_270(
    data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    sender_id: str,
    receiver_id: str,
    control_number: int,
    originator_id: str,
    now: datetime | None = None,
    trace_number: str | None = None,
    request_id: str | None = None,
    usage: str = "P",
) -> str:
    """The 270 interchange asking what the CoverageEligibilityRequest asks.

    ``sender_id``/``receiver_id`` are ISA06/ISA08 and GS02/GS03 (qualifier ZZ, mutually
    defined), ``control_number`` ISA13 and GS06; ``now`` defaults to the current local time.
    Raises ConversionError (the FHIR side) or X12Error (what cannot be written as X12).
    """
    inquiry = request_to_inquiry(
        data, originator_id=originator_id, trace_number=trace_number, request_id=request_id
    )
    return build_270(
        inquiry,
        sender_id=sender_id,
        receiver_id=receiver_id,
        control_number=control_number,
        now=now or datetime.now(),
        usage=usage,
    )
