"""The models of route files (YAML): which messages go to which destinations, and how.

A route file holds two keys, both optional::

    destinations:            # name -> where to deliver, and how often to retry
      local-fhir: {type: fhir, base_url: "http://127.0.0.1:8090/fhir", mode: transaction}
      dropbox:    {type: file, directory: var/outbox}
    routes:                  # each matching route delivers to each of its destinations
      - name: adt-to-fhir
        match: {message: [ADT], trigger: [A04, A08], conditions: [{path: PV1-2, in: [O]}]}
        mapping: fhir        # fhir: HL7v2 -> FHIR Bundle; none: as received; hl7v2: FHIR -> HL7v2
        destinations: [local-fhir]

A route reads one kind of input. HL7v2 criteria (``message``, ``trigger``, ``sending_application``,
``sending_facility``, ``conditions``) and ``mapping: fhir`` make it an HL7v2 route;
``resource_type`` and ``mapping: hl7v2`` make it a FHIR route; a route with neither (``match: {}``
and ``mapping: none``) passes every input through.

Destination types (``type`` selects the adapter, whose config model lies beside it in
:mod:`engine.adapters` and checks the destination's other keys): ``fhir`` (a FHIR R4 REST server,
https://hl7.org/fhir/R4/http.html), ``mllp`` (an HL7v2 receiver, HL7 v2.5.1 appendix C) and
``file`` (a directory). Every destination has a ``retry`` policy. Secrets never sit in a route
file: a bearer token or an OAuth2 client secret is read from the environment variable the file
names (``token_env``, ``client_secret_env``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engine.errors import HL7PathError
from engine.hl7v2.path import Path as HL7Path
from engine.hl7v2.path import parse_path
from engine.retry import RetryPolicy

__all__ = [
    "MAPPINGS",
    "Condition",
    "DestinationSpec",
    "Match",
    "Route",
    "RouteFile",
    "SourceSpec",
]

#: the values of a route's ``mapping``: what the engine does to a message before delivery
MAPPINGS: dict[str, str] = {
    "fhir": "convert HL7v2 to a FHIR transaction Bundle (engine.mappings)",
    "none": "deliver the message as received",
    "hl7v2": "convert FHIR to HL7v2 (engine.mappings.outbound)",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MESSAGE_RE = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_TRIGGER_RE = re.compile(r"^[A-Z0-9]{3}$")
_RESOURCE_RE = re.compile(r"^[A-Z][A-Za-z]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} must be letters, digits, '.', '_' or '-'")
    return value


# -- destinations --------------------------------------------------------------------------------


class DestinationSpec(BaseModel):
    """One destination as the route file writes it: its ``type``, how often to retry a delivery,
    and its adapter's own keys beside them (:attr:`settings`: ``base_url``, ``host``, ...).

    The routes know no adapter (the core imports none): the adapter of the ``type`` checks the
    settings with its own config model, through the check the route loader is given
    (:func:`engine.adapters.registry.load_routes`), and builds the destination from them.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    retry: RetryPolicy = RetryPolicy()
    #: deliveries to this destination under way at once (None: the dispatcher's default, 8);
    #: more for a server that answers quickly, fewer for one that limits its clients
    concurrency: int | None = Field(default=None, ge=1, le=64)

    @property
    def settings(self) -> dict[str, Any]:
        """The keys for the adapter: every key but ``type``, ``retry`` and ``concurrency``."""
        return dict(self.model_extra or {})


# -- routes --------------------------------------------------------------------------------------


class Condition(_Strict):
    """A test on one element of an HL7v2 message, by terse path (``PV1-2``, ``PID-3[2].4``).

    ``in``: the text is one of these; ``not_in``: it is none of these; ``present``: it is non-empty
    (true) or empty (false). When several are given, all must hold. An absent element reads as
    ``""``, so ``not_in: [""]`` also requires it to be there.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    path: str
    in_: list[str] | None = Field(default=None, alias="in")
    not_in: list[str] | None = None
    present: bool | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        try:
            p = parse_path(value)
        except HL7PathError as exc:
            raise ValueError(exc.message) from exc
        if not p.field:
            raise ValueError(f"path {value!r} names a whole segment: name a field, e.g. PV1-2")
        return value

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        if self.in_ is None and self.not_in is None and self.present is None:
            raise ValueError("a condition needs 'in', 'not_in' or 'present'")
        return self

    @property
    def parsed_path(self) -> HL7Path:
        return parse_path(self.path)


def _codes(values: list[str] | None, pattern: re.Pattern[str], what: str) -> list[str] | None:
    if values is not None:
        for v in values:
            if not pattern.match(v):
                raise ValueError(f"{v!r} is not {what}")
    return values


class Match(_Strict):
    """Which inputs a route takes. An omitted (or empty) list matches anything; given lists must
    all match (MSH-9.1, MSH-9.2, MSH-3.1, MSH-4.1; for FHIR input, the resource type; for a
    document, its type, its sender (``sending_application``) and its practice).

    ``kind`` names the input outright (``hl7v2``, ``fhir``, ``document``); without it the
    criteria and the mapping say it (``document_type`` or ``practice``: a document).
    """

    kind: Literal["hl7v2", "fhir", "document"] | None = None
    document_type: list[str] | None = None
    practice: list[str] | None = None
    message: list[str] | None = None
    trigger: list[str] | None = None
    sending_application: list[str] | None = None
    sending_facility: list[str] | None = None
    resource_type: list[str] | None = None
    conditions: list[Condition] = Field(default_factory=list)

    @field_validator("message")
    @classmethod
    def _message(cls, v: list[str] | None) -> list[str] | None:
        return _codes(v, _MESSAGE_RE, "a message code (MSH-9.1, e.g. ADT)")

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: list[str] | None) -> list[str] | None:
        return _codes(v, _TRIGGER_RE, "a trigger event (MSH-9.2, e.g. A04)")

    @field_validator("resource_type")
    @classmethod
    def _resource(cls, v: list[str] | None) -> list[str] | None:
        return _codes(v, _RESOURCE_RE, "a FHIR resource type (e.g. Patient, Bundle)")

    @property
    def hl7v2_criteria(self) -> bool:
        """Whether any criterion reads an HL7v2 message."""
        return bool(
            self.message
            or self.trigger
            or self.sending_application
            or self.sending_facility
            or self.conditions
        )

    @property
    def document_criteria(self) -> bool:
        """Whether any criterion reads a document's metadata."""
        return bool(self.document_type or self.practice)

    @model_validator(mode="after")
    def _one_input(self) -> Match:
        if self.document_criteria and (
            self.resource_type
            or self.message
            or self.trigger
            or self.sending_facility
            or self.conditions
            or self.kind in ("hl7v2", "fhir")
        ):
            raise ValueError(
                "document_type and practice match documents and cannot be mixed with HL7v2 or "
                "FHIR criteria (message, trigger, sending_facility, conditions, resource_type)"
            )
        if self.kind == "document" and (
            self.resource_type
            or self.message
            or self.trigger
            or self.sending_facility
            or self.conditions
        ):
            raise ValueError(
                "kind: document matches documents: use document_type, practice and "
                "sending_application (the sender), not HL7v2 or FHIR criteria"
            )
        if self.resource_type and self.hl7v2_criteria:
            raise ValueError(
                "resource_type matches FHIR input and cannot be mixed with HL7v2 criteria "
                "(message, trigger, sending_application, sending_facility, conditions)"
            )
        return self


class Route(_Strict):
    """One integration route: a match, a mapping and the destinations to deliver to."""

    name: str
    description: str | None = None
    match: Match = Field(default_factory=Match)
    mapping: Literal["fhir", "none", "hl7v2"]
    destinations: list[str] = Field(..., min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "route name")

    @field_validator("mapping", mode="before")
    @classmethod
    def _mapping(cls, v: Any, info: ValidationInfo) -> Any:
        # a list or a mapping is no name either (and cannot be looked up: unhashable)
        if not isinstance(v, str) or v not in MAPPINGS:
            route = info.data.get("name", "?")
            named = repr(v) if isinstance(v, str) else f"that is a {type(v).__name__}, not a name"
            raise ValueError(
                f"route {route!r} names an unknown mapping {named} (known: {', '.join(MAPPINGS)})"
            )
        return v

    @property
    def input(self) -> Literal["hl7v2", "fhir", "document", "any"]:
        """The kind of input this route reads."""
        if self.match.kind is not None:
            return self.match.kind
        if self.match.document_criteria:
            return "document"
        if self.match.resource_type or self.mapping == "hl7v2":
            return "fhir"
        if self.match.hl7v2_criteria or self.mapping == "fhir":
            return "hl7v2"
        return "any"

    @model_validator(mode="after")
    def _consistent(self) -> Route:
        if self.input == "document":
            return self  # fhir: DocumentReference and Binary; hl7v2: MDM^T02; none: as it came
        if self.match.kind == "hl7v2" and self.mapping == "hl7v2":
            raise ValueError(
                f"route {self.name!r}: mapping 'hl7v2' converts FHIR input, but the route takes "
                "HL7v2 (kind: hl7v2); use mapping 'fhir' or 'none'"
            )
        if self.match.kind == "fhir" and self.mapping == "fhir":
            raise ValueError(
                f"route {self.name!r}: mapping 'fhir' converts HL7v2, but the route takes FHIR "
                "(kind: fhir); use mapping 'hl7v2' or 'none'"
            )
        if self.mapping == "fhir" and self.match.resource_type:
            raise ValueError(
                f"route {self.name!r}: mapping 'fhir' converts HL7v2, but the route matches FHIR "
                "input (resource_type); use mapping 'hl7v2' or 'none'"
            )
        if self.mapping == "hl7v2" and self.match.hl7v2_criteria:
            raise ValueError(
                f"route {self.name!r}: mapping 'hl7v2' converts FHIR input, but the route matches "
                "HL7v2 criteria; use mapping 'fhir' or 'none'"
            )
        return self


# -- pull sources --------------------------------------------------------------------------------


class SourceSpec(BaseModel):
    """A pull source as the route file writes it: its ``type`` (``epic``, ``athenahealth``),
    how often it runs (``every_minutes``, or a ``cron`` line in the engine's time zone), how
    many days ahead it reads (``days``), and its adapter's own keys beside them
    (:attr:`settings`), checked like a destination's by the adapter of its type.

    What a source pulls (booked appointments, their patients and coverages) goes into the same
    pipeline as a pushed message: stored, deduplicated by version, routed and mapped.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    every_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    cron: str | None = None
    days: int = Field(default=2, ge=1, le=31)

    @property
    def settings(self) -> dict[str, Any]:
        """The keys for the adapter: all but ``type``, ``every_minutes``, ``cron`` and ``days``."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _when(self) -> SourceSpec:
        if self.every_minutes is not None and self.cron is not None:
            raise ValueError("give every_minutes or cron, not both")
        return self


class RouteFile(_Strict):
    """One route file: destinations by name, routes, and pull sources by name."""

    destinations: dict[str, DestinationSpec] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    sources: dict[str, SourceSpec] = Field(default_factory=dict)

    @field_validator("destinations")
    @classmethod
    def _names(cls, v: dict[str, DestinationSpec]) -> dict[str, DestinationSpec]:
        for name in v:
            _check_name(name, "destination name")
        return v

    @field_validator("sources")
    @classmethod
    def _source_names(cls, v: dict[str, SourceSpec]) -> dict[str, SourceSpec]:
        for name in v:
            _check_name(name, "source name")
        return v
