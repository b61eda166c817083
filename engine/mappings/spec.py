"""The models of the mapping files (YAML) an IT admin reads and edits.

Four kinds of file, each a small, closed vocabulary (no expressions hidden in strings):

``tables/*.yaml``
    a code table: HL7 code ↔ FHIR code, with the FHIR system (HL7 tables 0001, 0203, 0278 ...).
``datatypes/*.yaml``
    how one HL7 datatype (CX, XPN, XAD ...) becomes one FHIR datatype (Identifier, HumanName ...):
    component → element rules.
``segments/*.yaml``
    how one segment (PID, IN1 ...) fills one FHIR resource: field → element rules.
``messages/*.yaml``
    which resources a message type makes, from which segments, and how they refer to each other.

A *rule* moves one HL7 element to one FHIR element, in both directions (HL7v2 → FHIR and back):

* ``field`` / ``component`` / ``subcomponent``: where in the segment or datatype;
* ``fhir``: the target, a dotted path; a trailing ``[]`` appends to a list (``identifier[]``);
* at most one of ``type`` (a datatype map), ``table`` (a code table), ``transform`` (a named,
  documented Python function from :mod:`engine.mappings.transforms`), ``value`` (a constant);
* ``resource``: the element makes a resource of its own (a Practitioner from an XCN) and the rule
  writes a reference to it;
* ``wrap``: a fixed JSON shape the value is put into, at the place marked ``$value``;
* ``when``: apply only if a sibling component or field equals one of some codes;
* ``repeat``: every repetition of the field (default: when ``fhir`` ends with ``[]``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CodeTable",
    "Condition",
    "DatatypeMap",
    "MessageMap",
    "ResourcePlan",
    "Rule",
    "SegmentMap",
    "SiteConfig",
]

_FHIR_PATH_HELP = "a dotted FHIR path such as 'identifier[]' or 'period.start'"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """Apply a rule only when a sibling element holds one of some codes (or is present/absent)."""

    field: int | None = Field(None, ge=1)
    component: int | None = Field(None, ge=1)
    subcomponent: int | None = Field(None, ge=1)
    #: the element's text must be one of these (case-sensitive)
    in_: list[str] | None = Field(None, alias="in")
    #: the element must not be one of these
    not_in: list[str] | None = None
    #: the element must be non-empty (true) or empty (false)
    present: bool | None = None
    #: the message's trigger event must be one of these (MSH-9.2)
    trigger: list[str] | None = None
    #: at least one of these conditions must hold as well (``any: [{field: 3, present: true},
    #: {field: 19, present: true}]``): how "a PV1 that carries visit data" is said
    any: list[Condition] | None = None
    #: for a resource plan: the message must have none of these segments (a self-pay Coverage is
    #: made only when there is no IN1)
    lacks: list[str] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Rule(_Strict):
    """One HL7 element ↔ one FHIR element."""

    field: int | None = Field(None, ge=1)
    component: int | None = Field(None, ge=1)
    subcomponent: int | None = Field(None, ge=1)
    fhir: str = Field(..., description=_FHIR_PATH_HELP)
    type: str | None = None
    table: str | None = None
    #: for ``table`` rules: write a plain code, a Coding or a CodeableConcept
    as_: Literal["code", "Coding", "CodeableConcept"] = Field("code", alias="as")
    transform: str | None = None
    value: Any = None
    resource: str | None = None
    #: build one element from several fields of the same segment, with another segment map of
    #: that segment (``{fhir: "item[]", build: FT1-item}``)
    build: str | None = None
    wrap: dict[str, Any] | None = None
    when: Condition | None = None
    repeat: bool | None = None
    #: outbound only / inbound only
    direction: Literal["both", "in", "out"] = "both"
    note: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("fhir")
    @classmethod
    def _path(cls, v: str) -> str:
        parts = v.split(".")
        if not v or any(
            not p or p.count("[]") > 1 or ("[]" in p and not p.endswith("[]")) for p in parts
        ):
            raise ValueError(f"{v!r} is not {_FHIR_PATH_HELP}")
        if any(p.endswith("[]") for p in parts[:-1]):
            raise ValueError(
                f"{v!r}: only the last step may append ('[]'); use 'wrap' for nested lists"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Rule:
        kinds = [k for k in ("type", "table", "transform") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"use only one of type/table/transform (got {', '.join(kinds)})")
        if self.value is not None and (kinds or self.field or self.component):
            raise ValueError("a 'value' rule assigns a constant: it takes no field or type")
        if self.build is not None and (kinds or self.field or self.component or self.value):
            raise ValueError("a 'build' rule takes only 'fhir' (and 'when', 'wrap')")
        if self.resource and not self.type:
            raise ValueError("'resource' needs the 'type' (datatype map) that builds it")
        return self

    @property
    def repeats(self) -> bool:
        return self.repeat if self.repeat is not None else self.fhir.endswith("[]")


class DatatypeMap(_Strict):
    """HL7 datatype → FHIR datatype (or resource, for XCN → Practitioner)."""

    datatype: str
    fhir: str
    note: str | None = None
    rules: list[Rule]

    @model_validator(mode="after")
    def _components_only(self) -> DatatypeMap:
        for r in self.rules:
            if r.field is not None:
                raise ValueError(f"datatype rule for {r.fhir!r} names a field; use 'component'")
        return self


class SegmentMap(_Strict):
    """Segment → one resource's elements.

    A segment may feed several resources (IN1 → Coverage and the payer Organization): each is a
    file of its own with a ``name`` (``IN1-payer``); ``name`` defaults to the segment ID.
    """

    segment: str = Field(..., pattern=r"^[A-Z][A-Z0-9]{2}$")
    name: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9]{2}(-[a-z0-9-]+)?$")
    resource: str
    #: plans this map joins, as ``MESSAGE.plan`` (``[ADT.patient, SIU.patient]``): how a site maps a
    #: Z-segment without copying the message map
    add_to: list[str] = []
    note: str | None = None
    rules: list[Rule]

    @model_validator(mode="after")
    def _fields_only(self) -> SegmentMap:
        for r in self.rules:
            if r.field is None and r.value is None and r.build is None:
                raise ValueError(f"segment rule for {r.fhir!r} needs a 'field' (or a 'value')")
        return self


class RefSpec(_Strict):
    """A reference put into a fixed shape:
    ``{to: patient, wrap: {type: replaced-by, other: $value}}``.

    In ``wrap``, ``$value`` is the reference, ``$index`` the target's 1-based position among the
    resources of its plan and ``$first`` whether it is the first. ``all: true`` refers to every
    resource of the target plan (Claim.insurance to each Coverage), not only the first.
    """

    to: str | list[str]
    wrap: dict[str, Any] | None = None
    all: bool = False


class ResourcePlan(_Strict):
    """One resource (or one per segment occurrence) a message makes."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_-]*$")
    resource: str
    #: segment maps applied, in order, to build this resource
    segments: list[str]
    #: one resource per occurrence of this segment; the other segments are those that follow it
    #: (its group), e.g. ``each: IN1`` with ``segments: [IN1, IN2]``
    each: str | None = None
    #: references to other resources of the message: FHIR path -> plan name, or a list of plan
    #: names tried in order (``subscriber: [subscriber, patient]``)
    refs: dict[str, str | list[str] | RefSpec] = {}
    #: default values (set when the segments did not set them)
    values: dict[str, Any] = {}
    #: FHIR path -> code table keyed by the trigger event (e.g. Encounter.status from A03)
    trigger_values: dict[str, str] = {}
    #: the FHIR path of the business identifier used for the conditional update
    identity: str | None = None
    #: the references (search parameter -> a path of ``refs``) the identifier is unique within:
    #: a member ID names a Coverage only at its payer and for its beneficiary (``{beneficiary:
    #: beneficiary, payor: "payor[]"}``); their fullUrls join the resource's identity and its
    #: conditional URL (engine/mappings/entries.py)
    identity_within: dict[str, str] = {}
    #: without a business identifier, derive the resource's id from this plan's resource (a
    #: self-pay Coverage is one per patient: ``key_from: patient``) rather than from the message
    key_from: str | None = None
    #: build the resource only when this holds on the (first or anchor) segment
    when: Condition | None = None
    #: leave the resource out unless all these elements are present once references are made
    #: (a Claim without insurance is not a claim); such a resource must not be a ref target
    required: list[str] = []


class MessageMap(_Strict):
    """A message type (MSH-9.1) and the triggers it covers → the resources to build."""

    message: str = Field(..., pattern=r"^[A-Z]{3}$")
    triggers: list[str]
    note: str | None = None
    resources: list[ResourcePlan]
    #: the plan whose resource the message exists to carry (ADT: the Patient; SIU: the
    #: Appointment; DFT: the Claim): a message that cannot make it is refused with the reason,
    #: never answered with a Bundle that lacks it
    main: str | None = None
    #: fields that no map takes on purpose, per segment ID (an empty list: the whole segment),
    #: left out of the "not mapped" warnings; each should say why in the file's comments
    ignore: dict[str, list[int]] = {}

    @model_validator(mode="after")
    def _names(self) -> MessageMap:
        names = [p.name for p in self.resources]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"resource names must be unique: {', '.join(sorted(dupes))}")
        for p in self.resources:
            if p.key_from is not None and p.key_from not in names:
                raise ValueError(f"{p.name}.key_from: no resource named {p.key_from!r}")
            _check_identity_within(p, names)
        if self.main is not None and self.main not in names:
            raise ValueError(f"main: no resource named {self.main!r}")
        for p in self.resources:
            for path, target in p.refs.items():
                to = target.to if isinstance(target, RefSpec) else target
                for t in [to] if isinstance(to, str) else to:
                    if t not in names:
                        raise ValueError(f"{p.name}.refs.{path}: no resource named {t!r}")
        return self


class CodeTable(_Strict):
    """A vocabulary map (HL7 v2-to-FHIR IG concept maps, or a site's own)."""

    table: str
    hl7_table: str | None = None
    #: the FHIR code system of the mapped codes (for Coding/CodeableConcept output)
    system: str | None = None
    #: HL7 code -> FHIR code
    map: dict[str, str]
    #: FHIR code -> HL7 code, when the inverse of ``map`` is ambiguous
    reverse: dict[str, str] = {}
    display: dict[str, str] = {}
    #: FHIR code -> its code system, where a table maps into several (table 0063)
    systems: dict[str, str] = {}
    #: FHIR code for an HL7 code not in the map (None: the element is left out)
    default: str | None = None
    #: HL7 code for a FHIR code not in the map
    reverse_default: str | None = None
    #: an HL7 code not in the map (and no ``default``) becomes a CodeableConcept with the code as
    #: its ``text`` (``as: CodeableConcept`` rules only), rather than being left out: a site's own
    #: identifier type code (``MRN``) is kept as sent
    unmapped_as_text: bool = False
    note: str | None = None


class SiteConfig(_Strict):
    """Per-site settings that mapping rules consult (``site.yaml``)."""

    #: IANA time zone for timestamps without an offset (HL7 DTM without +ZZZZ)
    timezone: str = "America/New_York"
    #: sending facility (MSH-4.1) -> IANA time zone
    facility_timezones: dict[str, str] = {}
    #: assigning authority namespace (CX-4.1 / HD-1) -> identifier system URI
    identifier_systems: dict[str, str] = {}
    #: base for systems of assigning authorities with neither a mapping nor an OID
    identifier_system_base: str = "urn:engine:identifier:"
    #: which PID-3 repetition is the MRN: its CX-5 identifier type code (and optionally authority)
    mrn_type: str = "MR"
    mrn_authority: str | None = None
    #: outbound ADT flavour: registration (A28/A31) or visit (A04/A08)
    outbound_adt: Literal["registration", "visit"] = "registration"
    #: this engine's name in MSH-3/4 of messages it writes
    sending_application: str = "ENGINE"
    sending_facility: str = "ENGINE"
    note: str | None = None


def _check_identity_within(plan: ResourcePlan, names: list[str]) -> None:
    """``identity_within`` names plain references (no ``wrap``) to plans made before this one:
    their fullUrls must be known when this one's is derived."""
    if plan.identity_within and plan.identity is None:
        raise ValueError(f"{plan.name}.identity_within: needs an identity")
    for param, path in plan.identity_within.items():
        spec = plan.refs.get(path)
        if "." in path:
            raise ValueError(
                f"{plan.name}.identity_within.{param}: {path!r} must be an element of the "
                "resource itself (no dots)"
            )
        if spec is None:
            raise ValueError(f"{plan.name}.identity_within.{param}: {path!r} is not in refs")
        if isinstance(spec, RefSpec) and (spec.wrap or spec.all):
            raise ValueError(
                f"{plan.name}.identity_within.{param}: refs {path!r} must be a plain reference "
                "(no wrap, not all)"
            )
        to = spec.to if isinstance(spec, RefSpec) else spec
        later = [
            t for t in ([to] if isinstance(to, str) else to) if t in names[names.index(plan.name) :]
        ]
        if later:
            raise ValueError(
                f"{plan.name}.identity_within.{param}: {', '.join(later)} must come before "
                f"{plan.name} in resources"
            )
