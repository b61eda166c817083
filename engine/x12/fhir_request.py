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
                            system ``http://hl7.org/fhir/sid/us-npi``; without one, an
                            identifier typed v2-0203 ``PRN`` (NM108 SV, service provider
                            number) or ``TAX`` (NM108 FI)
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
                            ``id``, else a generated one (below): the 271 echoes it, which is
                            how its answer finds this request
TRN03                       ``originator_id`` if given, else the trace identifier's
                            ``assigner.identifier.value`` (what :mod:`engine.x12.fhir_inquiry`
                            writes for a 270 read back)
==========================  ================================================================

A reference whose target is not in the input becomes what the reference itself carries: the
insurer's ``identifier`` is the payer ID and its ``display`` the payer name; the provider's
identifier (an NPI, or typed PRN/TAX) and display; a Coverage reference's identifier typed
``MB`` (or untyped) the member ID; a Patient that is absent is not needed when the member ID is
known and the patient is the subscriber (the 270 may ask by member ID alone, IG 2100C). Each such
stand-in is reported in ``warnings``. Only what the 270 truly needs and nothing gives is refused,
every missing piece named in one :class:`~engine.errors.ConversionError`
(``CoverageEligibilityRequest.insurer: 'Organization/2' is not in the input and the reference
has no identifier: the 270 needs the payer ID (loop 2100A NM109)``).

A request without ``identifier`` or ``id`` (one POSTed in a transaction Bundle under a
``urn:uuid:`` fullUrl) gets a trace number derived from its fullUrl and its content:
``FHIR`` + the first 26 hex digits of a SHA-256, upper case (30 characters; TRN02 takes 50).
Deterministic rather than random, on purpose: converting the same request again gives the same
270, so a resend is recognisably the same question and the 271 that comes back for either
matches it, without a store of the numbers handed out (the CLI has none); and tests and golden
files stay stable. Two requests differing in anything (fullUrl, created, patient) get different
numbers. :func:`trace_number_for` gives the number; ``request_to_inquiry`` reports it in a
warning and puts it in the inquiry, whose 271 :func:`engine.x12.fhir_response.x271_to_fhir`
matches with ``trace=`` (the response's ``request.identifier`` carries it).
"""

from __future__ import annotations

import hashlib
import json
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

__all__ = ["coverage_eligibility_request_to_270", "request_to_inquiry", "trace_number_for"]

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

    def find(self, ref: Any) -> Resource | None:
        if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
            return None
        target = ref["reference"]
        return self.index.get(target) or self.index.get("/".join(target.split("/")[-2:]))

    def lookup(self, ref: Any, where: str, *types: str) -> Resource | None:
        """The resource ``ref`` points at, None when it is not in the input; refuses a
        reference of the wrong type."""
        res = self.find(ref)
        if res is not None and types and res.get("resourceType") not in types:
            raise ConversionError(
                f"{where}: {ref['reference']!r} is a {res.get('resourceType')}, not a "
                f"{' or '.join(types)}"
            )
        return res


def _absent(ref: Any, noun: str) -> str:
    """How a reference whose target is not in the input is named in a message."""
    if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
        return f"{ref['reference']!r} is not in the input"
    if isinstance(ref, Mapping) and (ref.get("identifier") or ref.get("display")):
        return "the reference names no resource"
    return f"there is no reference to a {noun}"


def _ref_identifier(ref: Any) -> Mapping[str, Any]:
    ident = ref.get("identifier") if isinstance(ref, Mapping) else None
    return ident if isinstance(ident, Mapping) and ident.get("value") else {}


def _ref_display(ref: Any) -> str:
    return str(ref.get("display") or "") if isinstance(ref, Mapping) else ""


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


#: v2-0203 identifier type → NM108 for a provider identifier that is not an NPI
_PROVIDER_ID_QUALIFIERS = {"PRN": "SV", "TAX": "FI"}


def _provider_id(idents: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(NM108, NM109): the NPI (XX), else an identifier typed PRN (SV) or TAX (FI)."""
    for ident in idents:
        if ident.get("value") and (ident.get("system") == NPI_SYSTEM or _has_type(ident, "NPI")):
            return "XX", str(ident["value"])
    for code, qualifier in _PROVIDER_ID_QUALIFIERS.items():
        for ident in idents:
            if ident.get("value") and _has_type(ident, code):
                return qualifier, str(ident["value"])
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


def _provider(
    resolver: _Resolver, request: Resource, problems: list[str], notes: list[str]
) -> Provider | None:
    where = "CoverageEligibilityRequest.provider"
    ref = request.get("provider")
    res = resolver.lookup(ref, where, "Organization", "Practitioner", "PractitionerRole")
    wanted = f"an NPI (identifier system {NPI_SYSTEM}) or an identifier typed PRN or TAX"
    if res is None:
        found = _provider_id([_ref_identifier(ref)] if _ref_identifier(ref) else [])
        name = _ref_display(ref)
        missing = []
        if found is None:
            missing.append(f"the provider's ID (loop 2100B NM109), {wanted}, in the reference")
        if not name:
            missing.append("the provider's name (loop 2100B NM103) as the reference's display")
        if missing:
            problems.append(
                f"{where}: {_absent(ref, 'provider')}; the 270 needs " + ", ".join(missing)
            )
            return None
        assert found is not None
        notes.append(
            f"{where}: {_absent(ref, 'provider')}; the 270 names the provider by the "
            "reference's identifier and display"
        )
        return Provider(npi=found[1], organization=name, id_qualifier=found[0])
    if res["resourceType"] == "PractitionerRole":
        candidates = [
            resolver.find(res.get("practitioner")),
            resolver.find(res.get("organization")),
        ]
        with_id = [
            c for c in candidates if c is not None and _provider_id(c.get("identifier") or [])
        ]
        if not with_id:
            raise ConversionError(
                f"{where}: {_label(res)} has no practitioner or organization with {wanted}"
            )
        res = with_id[0]
    found = _provider_id(res.get("identifier") or [])
    if found is None:
        raise ConversionError(
            f"{where}: {_label(res)} has no NPI (identifier system {NPI_SYSTEM})"
            " nor an identifier typed PRN or TAX"
        )
    qualifier, number = found
    if res["resourceType"] == "Organization":
        return Provider(npi=number, organization=str(res.get("name") or ""), id_qualifier=qualifier)
    person = _human_name(res)
    given = [str(g) for g in person.get("given", []) or []]
    return Provider(
        npi=number,
        last_name=str(person.get("family") or ""),
        first_name=given[0] if given else "",
        id_qualifier=qualifier,
    )


def _insurer(
    resolver: _Resolver, request: Resource, problems: list[str], notes: list[str]
) -> Payer | None:
    where = "CoverageEligibilityRequest.insurer"
    ref = request.get("insurer")
    org = resolver.lookup(ref, where, "Organization")
    if org is not None:
        return Payer(name=str(org.get("name") or ""), payer_id=_payer_id(org))
    ident, name = _ref_identifier(ref), _ref_display(ref)
    missing = []
    if not ident:
        missing.append("the payer ID (loop 2100A NM109) as the reference's identifier")
    if not name:
        missing.append("the payer name (loop 2100A NM103) as the reference's display")
    if missing:
        problems.append(
            f"{where}: {_absent(ref, 'Organization')}; the 270 needs " + ", ".join(missing)
        )
        return None
    notes.append(
        f"{where}: {_absent(ref, 'Organization')}; the 270 names the payer by the "
        "reference's identifier and display"
    )
    return Payer(name=name, payer_id=str(ident["value"]))


def _trace_identifier(request: Resource) -> Mapping[str, Any]:
    return next((i for i in request.get("identifier", []) or [] if i.get("value")), {})


def trace_number_for(request: Mapping[str, Any], full_url: str = "") -> str:
    """The trace number (TRN02) generated for a request with neither identifier nor id:
    ``FHIR`` + 26 upper-case hex digits of the SHA-256 of its fullUrl and its content (JSON,
    keys sorted), so the same request always gets the same number (see the module docstring)."""
    content = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{full_url}\n{content}".encode()).hexdigest()
    return "FHIR" + digest[:26].upper()


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


def _the_request(
    resources: list[tuple[str, Resource]], request_id: str | None
) -> tuple[str, Resource]:
    """The one CoverageEligibilityRequest of the input (its fullUrl and itself)."""
    requests = [
        (url, r)
        for url, r in resources
        if r.get("resourceType") == "CoverageEligibilityRequest"
        and (request_id is None or request_id in (r.get("id"), url))
    ]
    if len(requests) != 1:
        which = f" with id {request_id!r}" if request_id else ""
        raise ConversionError(
            f"expected one CoverageEligibilityRequest{which}, found {len(requests)}"
        )
    return requests[0]


def _coverage(
    resolver: _Resolver, request: Resource, notes: list[str]
) -> tuple[Resource | None, str]:
    """The focal insurance's Coverage (else the first) and the member ID (2100C NM109): its
    subscriberId, or a Coverage reference's own identifier when the Coverage is not in the input."""
    where = "CoverageEligibilityRequest.insurance.coverage"
    insurances = request.get("insurance", []) or []
    focal = [i for i in insurances if i.get("focal")] or insurances
    if not focal:
        return None, ""
    ref = focal[0].get("coverage")
    coverage = resolver.lookup(ref, where, "Coverage")
    if coverage is not None:
        return coverage, _member_id(coverage)
    ident = _ref_identifier(ref)
    if ident and (not ident.get("type") or _has_type(ident, "MB")):
        notes.append(
            f"{where}: {_absent(ref, 'Coverage')}; the member ID (loop 2100C NM109) is the "
            "reference's identifier"
        )
        return None, str(ident["value"])
    notes.append(f"{where}: {_absent(ref, 'Coverage')}; no member ID")
    return None, ""


def _subscriber_of(
    resolver: _Resolver, coverage: Resource | None, patient: Resource | None
) -> tuple[bool, Resource | None]:
    """Whether the patient is a dependent (loop 2000D: Coverage.relationship other than self,
    and a subscriber other than the patient), and the Coverage's subscriber."""
    relationship = ""
    if coverage is not None:
        codings = (coverage.get("relationship") or {}).get("coding", []) or []
        relationship = str(codings[0].get("code") or "") if codings else ""
    subscriber = resolver.find(coverage.get("subscriber")) if coverage else None
    is_dependent = relationship not in ("", "self") and (
        patient is None or subscriber is not patient
    )
    return is_dependent, subscriber


def _absent_patient(
    request: Resource, is_dependent: bool, member_id: str, problems: list[str], notes: list[str]
) -> None:
    """A patient not in the input: refused for a dependent (2100D needs a name) or without a
    member ID; otherwise the 270 asks by the member ID alone (IG 2100C)."""
    where = "CoverageEligibilityRequest.patient"
    absent = _absent(request.get("patient"), "Patient")
    if is_dependent:
        problems.append(
            f"{where}: {absent}; the 270 needs the dependent's last and first name (loop 2100D "
            "NM103/NM104)"
        )
    elif not member_id:
        problems.append(
            f"{where}: {absent}, and there is no member ID (Coverage.subscriberId); the 270 "
            "needs one or the other (loop 2100C NM109, or NM103/NM104 and DMG02)"
        )
    else:
        notes.append(f"{where}: {absent}; the 270 asks by the member ID alone")


def _trace(
    request: Resource,
    full_url: str,
    trace_number: str | None,
    originator_id: str | None,
    notes: list[str],
) -> tuple[str, str]:
    """TRN02 and TRN03 (see the module table): given, else from the request, else generated
    (TRN02 only; TRN03 unknown is refused)."""
    trace_ident = _trace_identifier(request)
    trace = trace_number or str(trace_ident.get("value") or request.get("id") or "")
    if not trace:
        trace = trace_number_for(request, full_url)
        notes.append(
            f"CoverageEligibilityRequest has no identifier or id: trace number (TRN02) {trace} "
            "derived from its fullUrl and content"
        )
    originator = originator_id or str(
        ((trace_ident.get("assigner") or {}).get("identifier") or {}).get("value") or ""
    )
    if not originator:
        raise ConversionError(
            "the trace originator (TRN03) is unknown: give originator_id, or an identifier "
            "whose assigner.identifier is the originator (CoverageEligibilityRequest.identifier)"
        )
    return trace, originator


def request_to_inquiry(
    data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    originator_id: str | None = None,
    trace_number: str | None = None,
    request_id: str | None = None,
    warnings: list[str] | None = None,
) -> EligibilityInquiry:
    """The eligibility question a CoverageEligibilityRequest asks (see the module table).

    ``originator_id`` is TRN03 (``1`` + the practice's EIN, 10 characters); without it, the
    trace identifier's assigner's identifier (a 270 read back). ``request_id`` picks one
    request when the input holds several: its ``id`` or its entry's ``fullUrl``. Stand-ins for
    referenced resources that are not in the input, and a generated trace number, are appended
    to ``warnings`` when a list is given.
    """
    notes: list[str] = [] if warnings is None else warnings
    resources = _collect(data)
    full_url, request = _the_request(resources, request_id)
    resolver = _Resolver(resources)
    problems: list[str] = []  # everything missing, refused together
    patient = resolver.lookup(
        request.get("patient"), "CoverageEligibilityRequest.patient", "Patient"
    )
    payer = _insurer(resolver, request, problems, notes)
    coverage, member_id = _coverage(resolver, request, notes)
    is_dependent, subscriber_res = _subscriber_of(resolver, coverage, patient)
    if patient is None:
        _absent_patient(request, is_dependent, member_id, problems, notes)
    provider = _provider(resolver, request, problems, notes)
    if problems:
        raise ConversionError("; ".join(problems))
    assert payer is not None and provider is not None
    if is_dependent:
        subscriber = _person(subscriber_res, member_id)
        dependent: Person | None = _person(patient)
    else:
        subscriber, dependent = _person(patient, member_id), None
    trace, originator = _trace(request, full_url, trace_number, originator_id, notes)
    start, end = _service_dates(request)
    return EligibilityInquiry(
        payer=payer,
        provider=provider,
        subscriber=subscriber,
        dependent=dependent,
        trace_number=trace,
        originator_id=originator,
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
