"""Outbound message files: how FHIR resources become one HL7v2 message (``specs/outbound/*.yaml``).

The segment and datatype maps say how one segment and one resource correspond, in both directions;
they do not say which message to write, in which order, nor which resource feeds which segment.
That is what an outbound file says, one per message type (HL7 v2.5.1 chapter 2.5, message
structures; chapter 3 ADT, 6 DFT, 10 SIU)::

    message: ADT
    anchor: patient                  # the selection the message is about
    select:                          # which resources of the input, named
      - {name: patient, resource: Patient, required: true}
      - {name: coverage, resource: Coverage, refers: {beneficiary: patient}, many: true,
         sort: order}
      - {name: payer, resource: Organization, via: coverage.payor}
    triggers:                        # the first that fits is used
      - {trigger: A28, site: [registration], event: [new]}
    segments:                        # in message order
      - {segment: EVN, always: true, set: {EVN-2: $timestamp}}
      - {segment: PID, from: patient, maps: [PID], requires: {PID-3: Patient.identifier}}
      - each: coverage               # a repeating segment group, once per Coverage
        segments:
          - {segment: IN1, maps: [IN1, {map: IN1-payer, from: payer}]}

Selections (``select``) are read in order, so a selection may name the ones above it:

* ``resource`` alone: every resource of that type in the input;
* ``via: coverage.payor``: the resources the references at that path of another selection point to
  (inside a group iterating ``coverage``, only the current Coverage's);
* ``refers: {beneficiary: patient}``: keep those whose reference there points to that selection;
* ``not_via: [coverage.subscriber]``: drop those referred to from there (a subscriber is not a
  next of kin);
* ``sort``: order by the value at that path (Coverage.order), those without it last;
* ``many``: every match, else the first; ``required``: none is an error naming what is missing;
* ``or_via: insured.beneficiary``: when the input holds no resource of the type at all, the ones
  the references there point to (a lone Coverage is an ADT about its beneficiary);
* ``stand_in``: a reference (at ``via`` or ``or_via``) to a resource of this type that is not in
  the input does not stop the message: a stand-in resource is made from what the reference
  carries, its ``identifier`` (else the id of a ``Type/id`` reference, as an identifier value)
  and its ``display`` (a person's as the family name, unsplit: the order of its words is unknown;
  anything else's as its ``name``), and a warning says so. A logical reference (identifier only,
  no ``type``) stands in for the selection's type. Without ``stand_in``, such a reference is left
  out with a warning (a Claim's Coverage that is not in the input makes no IN1).

Segment steps: ``from`` (a selection: its first resource) or ``each`` (a selection, one segment
per resource; or ``selection.list``, one segment per element of that list: ``claim.item`` gives an
FT1 per Claim.item, the maps seeing the Claim with that one item); ``maps`` (segment maps, each on
the step's resource or on the resource of another selection with ``from``); ``set`` (written
before the maps, which then cannot change it: a rule whose condition names the field sees it),
``fill_from`` (a field copied into another that the maps left empty) and ``defaults`` (written where
the maps left nothing), each with ``$set_id``, ``$trigger``, ``$timestamp``, ``$control_id``,
``$sending_application`` (site.yaml) or a constant; ``always`` (write the segment even without
data: the message structure requires it); ``requires`` (a field that must have a value, with the
FHIR element named in the error); ``default_from`` (a field the maps left empty, filled from
other FHIR elements with a warning: FT1-4 from Claim.billablePeriod.start, else Claim.created),
``id_without`` (a field the maps left empty gets the resource's own id, with a warning: PID-3 of
a Patient without identifier) and ``skip_without`` (fields without which the segment is left
out, e.g. an AIL without a location); ``null_without`` (a field HL7 requires that the maps left
empty gets the HL7 null ``""`` (v2.5.1 §2.5.3: the value is known to be absent), with a warning
naming the FHIR element: a Patient known only by a reference without a display has no name).

``reverse`` gives, per code table, the HL7 code to write for a FHIR code when the table's own
reverse gives one the HL7 version written does not have.

``also_from`` (message level) names resource types that make this message when the input holds
no message's anchor: ``[Coverage]`` on ADT, for a Coverage sent alone.

Triggers: ``event`` (what the caller says: ``new``, ``update``, ``reschedule``, ``modify``; a
trigger code passed as the event picks that trigger), ``site`` (``site.yaml`` outbound_adt) and
``anchor`` (values of elements of the anchor resource: ``{status: [cancelled]}``).

Incomplete: one message per call (no batch); segment groups nest one level deep in practice,
though the model allows more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.errors import ConfigError, HL7PathError
from engine.hl7v2.path import parse_path
from engine.mappings.loader import default_specs_dir
from engine.yamlfile import YamlFile, read_yaml

__all__ = [
    "DefaultFrom",
    "MapUse",
    "OutboundMessage",
    "Pick",
    "Requirement",
    "Select",
    "Step",
    "TriggerChoice",
    "load_outbound",
]

_NAME = r"^[a-z][a-z0-9_-]*$"
_SPECIALS = frozenset({"$set_id", "$trigger", "$timestamp", "$control_id", "$sending_application"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Select(_Strict):
    """A named set of input resources that segments are written from."""

    name: str = Field(..., pattern=_NAME)
    resource: str = Field(..., pattern=r"^[A-Z][A-Za-z]+$")
    #: ``selection.path``: the resources the references at that path point to
    via: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]*\.[A-Za-z][A-Za-z0-9.]*$")
    #: FHIR path -> selection: keep the resources whose reference there points into it
    refers: dict[str, str] = {}
    #: ``selection.path`` list: drop the resources referred to from there
    not_via: list[str] = []
    #: FHIR path to order by (numbers or text; those without a value last)
    sort: str | None = None
    many: bool = False
    required: bool = False
    #: ``selection.path``: without a resource of this type in the input, the ones referred to there
    or_via: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]*\.[A-Za-z][A-Za-z0-9.]*$")
    #: a reference to such a resource outside the input makes a stand-in from the reference
    stand_in: bool = False
    note: str | None = None


class Pick(_Strict):
    """Outbound only: the elements a field takes, by what they hold.

    ``{field: PID-18, fhir: identifier, where: {type.coding.code: [AN]}}``: the PID-18 rule takes
    only identifiers typed AN, and is offered them before the other rules of ``identifier``. A
    ``build`` rule is picked by a field its map writes (``IN1-8`` for the group class of IN1-8/9).
    """

    field: str
    fhir: str
    where: dict[str, list[str]]


class MapUse(_Strict):
    """One segment map applied to a segment: to the step's resource, or to another selection's."""

    map: str
    from_: str | None = Field(None, alias="from", pattern=_NAME)
    #: resource types besides the map's own that it may read (IN1-subscriber reads a Patient
    #: when the patient is the subscriber: the elements it reads have the same names)
    accept: list[str] = []
    pick: list[Pick] = []


class DefaultFrom(_Strict):
    """Where a field's value comes from when the maps left it empty: the first of these FHIR
    paths on the step's resource with a value, written with a transform (``date``)."""

    fhir: list[str] = Field(..., min_length=1)
    transform: str = "text"
    #: the FHIR element the maps read, named in the warning (``Claim.item.serviced[x]``)
    instead_of: str


class Step(_Strict):
    """A segment, or a group of steps repeated per resource (``each``)."""

    segment: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9]{2}$")
    segments: list[Step] | None = None
    from_: str | None = Field(None, alias="from", pattern=_NAME)
    each: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]*(\.[A-Za-z][A-Za-z0-9]*)?$")
    maps: list[MapUse | str] = []
    set: dict[str, str] = {}
    #: field -> field of the same segment copied into it when the maps left it empty (FT1-7,
    #: required, from FT1-25 when the charge has only its CPT code)
    fill_from: dict[str, str] = {}
    defaults: dict[str, str] = {}
    always: bool = False
    #: terse path -> the FHIR element named in the error (``PID-3: Patient.identifier``)
    requires: dict[str, str] = {}
    #: terse path -> the FHIR element: a required field the maps left empty is sent as HL7 null
    null_without: dict[str, str] = {}
    #: terse path -> FHIR paths on the step's resource, tried in order, for a field the maps left
    #: empty (FT1-4 date of service from Claim.billablePeriod.start, else Claim.created)
    default_from: dict[str, DefaultFrom] = {}
    #: terse path -> the FHIR element: a field the maps left empty gets the resource's own id
    #: (Resource.id, else the tail of its fullUrl), with a warning (PID-3 of a Patient without
    #: an identifier: FHIR R4 Patient.identifier is 0..*)
    id_without: dict[str, str] = {}
    skip_without: list[str] = []
    note: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Step:
        if (self.segment is None) == (self.segments is None):
            raise ValueError("a step is either a 'segment' or a group of 'segments'")
        if self.segments is not None:
            if self.each is None:
                raise ValueError("a group of 'segments' repeats: it needs 'each'")
            if (
                self.maps
                or self.set
                or self.fill_from
                or self.defaults
                or self.requires
                or self.null_without
                or self.default_from
                or self.id_without
                or self.skip_without
            ):
                raise ValueError("a group takes only 'each' and 'segments'")
            return self
        if self.from_ is not None and self.each is not None:
            raise ValueError("use 'from' (one segment) or 'each' (one per resource), not both")
        seg = self.segment
        paths = [*self.set, *self.defaults, *self.requires, *self.null_without, *self.skip_without]
        paths += [*self.default_from, *self.id_without]
        paths += [*self.fill_from, *self.fill_from.values()]
        for key in paths:
            try:
                p = parse_path(key)
            except HL7PathError as exc:
                raise ValueError(str(exc)) from exc
            if p.segment != seg or not p.field or p.occurrence != 1:
                raise ValueError(f"{key!r} is not a field of this {seg} (e.g. '{seg}-2')")
        for key in (*self.fill_from, *self.fill_from.values()):
            if parse_path(key).component:
                raise ValueError(f"fill_from {key!r}: name whole fields (e.g. '{seg}-7')")
        for value in (*self.set.values(), *self.defaults.values()):
            if value.startswith("$") and value not in _SPECIALS:
                raise ValueError(f"{value!r}: use one of {', '.join(sorted(_SPECIALS))}")
        for use in self.maps:
            if isinstance(use, MapUse):
                for pick in use.pick:
                    p = parse_path(pick.field)
                    if p.segment != seg or not p.field:
                        raise ValueError(f"pick {pick.field!r} is not a field of this {seg}")
        return self


class TriggerChoice(_Strict):
    """When to use a trigger event; every condition given must hold."""

    trigger: str = Field(..., pattern=r"^[A-Z0-9]{3}$")
    #: MSH-9.3; by default HL7 table 0354's structure for the trigger
    structure: str | None = Field(None, pattern=r"^[A-Z0-9]{3}_[A-Z0-9]{3}$")
    event: list[str] | None = None
    site: list[Literal["registration", "visit"]] | None = None
    #: FHIR path on the anchor resource -> the values that select this trigger
    anchor: dict[str, list[str]] = {}


class Requirement(_Strict):
    """An element the message cannot be written without: ``{select: appointment, fhir: start,
    for: SCH-11 / TQ1-7}`` → "Appointment.start is required for SIU SCH-11 / TQ1-7"."""

    select: str = Field(..., pattern=_NAME)
    fhir: str
    for_: str = Field(..., alias="for")
    #: FHIR path -> values: when the resource has one of them, the element may be absent (FHIR
    #: R4 Appointment invariant app-3: a proposed appointment has no start); a warning then says
    #: what the message lacks
    unless: dict[str, list[str]] = {}


class OutboundMessage(_Strict):
    """One outbound message type: selections, trigger choice, segments."""

    message: str = Field(..., pattern=r"^[A-Z]{3}$")
    version: str = "2.5.1"
    anchor: str = Field(..., pattern=_NAME)
    #: when an input holds the anchors of several message types, the highest priority wins
    #: (a Claim's Bundle holds its Patient too)
    priority: int = 0
    #: resource types that make this message when the input holds no anchor of any message
    also_from: list[str] = []
    note: str | None = None
    select: list[Select]
    triggers: list[TriggerChoice]
    requires: list[Requirement] = []
    #: ``selection.path``: every reference there must be in the input (an Appointment's
    #: participants), else the error names the one that is not
    resolve: list[str] = []
    segments: list[Step]
    #: code table -> FHIR code -> HL7 code, over the table's own reverse, for codes the HL7
    #: version written lacks (table 0201 PRS, personal, is HL7 v2.6 and later)
    reverse: dict[str, dict[str, str]] = {}

    @model_validator(mode="after")
    def _names(self) -> OutboundMessage:
        known: set[str] = set()
        for sel in self.select:
            if sel.name in known:
                raise ValueError(f"selection {sel.name!r} is defined twice")
            named = [t for t in sel.refers.values()]
            for via in (sel.via, sel.or_via):
                if via:
                    named.append(via.split(".", 1)[0])
            if sel.via and sel.or_via:
                raise ValueError(f"selection {sel.name!r}: 'or_via' is for one without 'via'")
            named += [p.split(".", 1)[0] for p in sel.not_via]
            for n in named:
                if n not in known:
                    raise ValueError(
                        f"selection {sel.name!r} names {n!r}, which is not defined above it"
                    )
            known.add(sel.name)
        if self.anchor not in known:
            raise ValueError(f"anchor {self.anchor!r} is not a selection")
        for req in self.requires:
            if req.select not in known:
                raise ValueError(f"requires: no selection {req.select!r}")
        for path in self.resolve:
            if path.split(".", 1)[0] not in known or "." not in path:
                raise ValueError(f"resolve: {path!r} is not 'selection.path'")

        def check(steps: list[Step]) -> None:
            for step in steps:
                names = [step.from_, (step.each or "").split(".", 1)[0] or None]
                names += [u.from_ for u in step.maps if isinstance(u, MapUse)]
                for n in names:
                    if n is not None and n not in known:
                        raise ValueError(f"segments: no selection named {n!r}")
                if step.segments:
                    check(step.segments)

        check(self.segments)
        return self


def load_outbound(
    site_dir: Path | None = None,
    *,
    defaults: Path | None = None,
    sources: dict[str, YamlFile] | None = None,
) -> dict[str, OutboundMessage]:
    """Read ``outbound/*.yaml`` of the built-in specs, then of a site directory over them (a site
    file of the same name replaces the built-in one). Raises :class:`ConfigError`.

    ``sources``, when given, receives each file as read (``outbound/ADT``), for the checks that
    name lines after loading."""
    roots = [("(built-in) ", defaults or default_specs_dir())]
    if site_dir is not None:
        roots.append((f"{site_dir}/", site_dir))
    out: dict[str, OutboundMessage] = {}
    for prefix, root in roots:
        folder = root / "outbound"
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            where = f"{prefix}outbound/{path.name}"
            source = read_yaml(path, where)
            spec = source.validate(OutboundMessage)
            if path.stem != spec.message:
                raise ConfigError(
                    f"{where}, line 1: the file must be named after its message "
                    f"({spec.message}.yaml), so a site file of the same name replaces it"
                )
            out[spec.message] = spec
            if sources is not None:
                sources[f"outbound/{spec.message}"] = source
    return out
