"""The destination registry: a route file's destination ``type`` names its adapter, whose config
model checks the destination's keys and whose class delivers to it.

* ``fhir``: :class:`~engine.adapters.fhir_rest.FhirDestination` and
  :class:`~engine.adapters.fhir_rest.FhirRestDestination` (a FHIR R4 REST server);
* ``mllp``: :class:`~engine.adapters.mllp.client.MllpDestination` and
  :class:`~engine.adapters.mllp.client.MLLPDestination` (an HL7v2 receiver);
* ``file``: :class:`~engine.adapters.files.FileDestination` and
  :class:`~engine.adapters.files.FileDropDestination` (a directory);
* ``epic``: :class:`~engine.adapters.epic.EpicDestination` and
  :class:`~engine.adapters.epic.EpicDocumentDestination` (documents to Epic over FHIR R4).
* ``athenahealth``: :class:`~engine.adapters.athena.AthenaDestinationConfig` and
  :class:`~engine.adapters.athena.AthenaDestination` (documents to athenahealth's REST API).

The registry sits above the contract (:mod:`engine.adapters.destination`) and the adapters, so the
contract imports no adapter and no import runs in a circle. Routes, the core, know no adapter
either: :func:`load_routes` hands the routes loader the check of each destination's keys, so a
bad destination stops start-up (and ``engine serve``, ``engine worker``) with the route file, the
line and the key, before anything runs. Every destination's ``type`` and ``retry`` are the
routes' own (:class:`~engine.routes.spec.DestinationSpec`); a new kind of destination is one
line here, with its config model beside its adapter.

The worker builds its destinations with the store's tag (``store_tag``,
:func:`engine.store.identity.database_tag`): a destination that names what it writes by it (a
file folder, :data:`DestinationType.build_tagged`) names a message's file alike on every node of
one database, so a redelivery by another node finds the first copy.

Pull sources (a route file's ``sources:``, engine/jobs/pull.py) are registered the same way in
:data:`SOURCE_TYPES`: ``fhir`` (:class:`~engine.adapters.fhir_source.FhirSource`, appointment
search on any FHIR R4 server); the EHR adapters add theirs (``epic``, ``athenahealth``).
:func:`source_config` is the check the loader runs on each source (its type's keys, and its
``cron`` line), :func:`build_source` builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from engine.adapters.athena import AthenaDestination, AthenaDestinationConfig
from engine.adapters.athena_source import AthenaSource, AthenaSourceConfig
from engine.adapters.destination import Destination
from engine.adapters.epic import (
    EpicDestination,
    EpicDocumentDestination,
    EpicSource,
    EpicSourceConfig,
    check_epic_routes,
)
from engine.adapters.fhir_rest import FhirDestination, FhirRestDestination
from engine.adapters.fhir_source import FhirSource, FhirSourceConfig
from engine.adapters.files import FileDestination, FileDropDestination
from engine.adapters.mllp.client import MLLPDestination, MllpDestination
from engine.adapters.source import Source
from engine.errors import ConfigError
from engine.routes import loader
from engine.routes.loader import RouteSet
from engine.routes.spec import DestinationSpec, SourceSpec

__all__ = [
    "DESTINATION_TYPES",
    "SOURCE_TYPES",
    "DestinationType",
    "SourceType",
    "build_destination",
    "build_source",
    "destination_config",
    "load_routes",
    "source_config",
]

C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True)
class DestinationType(Generic[C]):
    """One kind of destination: the model of its keys, and its adapter built from them."""

    config: type[C]
    build: Callable[[str, C], Destination]
    #: built with the store's tag, when there is one (a folder names its files by it)
    build_tagged: Callable[[str, C, str], Destination] | None = None


#: every destination ``type`` a route file may name
DESTINATION_TYPES: dict[str, DestinationType[Any]] = {
    "fhir": DestinationType(FhirDestination, FhirRestDestination),
    "mllp": DestinationType(MllpDestination, MLLPDestination),
    "file": DestinationType(FileDestination, FileDropDestination, FileDropDestination),
    "epic": DestinationType(EpicDestination, EpicDocumentDestination),
    "athenahealth": DestinationType(AthenaDestinationConfig, AthenaDestination),
}


@dataclass(frozen=True)
class SourceType(Generic[C]):
    """One kind of pull source: the model of its keys, and its adapter built from them."""

    config: type[C]
    build: Callable[[str, C], Source]


#: every pull source ``type`` a route file may name
SOURCE_TYPES: dict[str, SourceType[Any]] = {
    "fhir": SourceType(FhirSourceConfig, FhirSource),
    "epic": SourceType(EpicSourceConfig, EpicSource),
    "athenahealth": SourceType(AthenaSourceConfig, AthenaSource),
}


def _kind(spec: DestinationSpec) -> DestinationType[Any]:
    kind = DESTINATION_TYPES.get(spec.type)
    if kind is None:
        known = ", ".join(repr(t) for t in DESTINATION_TYPES)
        problem = PydanticCustomError(
            "destination_type",
            "destination type '{type}' does not match any of the expected tags: {known}",
            {"type": spec.type, "known": known},
        )
        detail = InitErrorDetails(type=problem, loc=("type",), input=spec.type)
        raise ValidationError.from_exception_data("DestinationSpec", [detail])
    return kind


def destination_config(spec: DestinationSpec) -> BaseModel:
    """A destination's keys checked by the config model of its ``type``.

    Raises pydantic's :class:`~pydantic.ValidationError`, located from the destination (an
    unknown type at ``type``): the check :func:`load_routes` gives the routes loader.
    """
    config: BaseModel = _kind(spec).config.model_validate(spec.settings)
    return config


def build_destination(
    name: str, spec: DestinationSpec, *, store_tag: str | None = None
) -> Destination:
    """The adapter for one destination (a route file's ``destinations.<name>``); ``store_tag``
    (the worker's, from the store it delivers from) for the kinds that name files by it.

    Raises :class:`~engine.errors.ConfigError` when the destination cannot work: its keys are
    wrong, or the environment variable holding its token is not set.
    """
    try:
        kind = _kind(spec)
        config = kind.config.model_validate(spec.settings)
    except ValidationError as exc:
        raise ConfigError(f"destination {name!r}: {_first(exc)}") from exc
    if store_tag is not None and kind.build_tagged is not None:
        return kind.build_tagged(name, config, store_tag)
    return kind.build(name, config)


def _error(model: str, loc: tuple[str, ...], kind: str, text: str, value: Any) -> ValidationError:
    """A one-problem ValidationError at ``loc`` (the loader names the file's line and key)."""
    problem = PydanticCustomError(kind, text)
    detail = InitErrorDetails(type=problem, loc=loc, input=value)
    return ValidationError.from_exception_data(model, [detail])


def _source_kind(spec: SourceSpec) -> SourceType[Any]:
    kind = SOURCE_TYPES.get(spec.type)
    if kind is None:
        known = ", ".join(repr(t) for t in SOURCE_TYPES)
        raise _error(
            "SourceSpec",
            ("type",),
            "source_type",
            f"source type {spec.type!r} does not match any of the expected tags: {known}",
            spec.type,
        )
    return kind


def source_config(spec: SourceSpec) -> BaseModel:
    """A pull source's keys checked by the config model of its ``type``, and its ``cron`` line
    read (five fields, minute to day of week). Raises pydantic's ValidationError located from
    the source: the check :func:`load_routes` gives the routes loader."""
    config: BaseModel = _source_kind(spec).config.model_validate(spec.settings)
    if spec.cron is not None:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(spec.cron, timezone="UTC")
        except ValueError as exc:
            raise _error(
                "SourceSpec",
                ("cron",),
                "cron",
                f"cron {spec.cron!r} is not a cron line (minute hour day month weekday): {exc}",
                spec.cron,
            ) from exc
    return config


def build_source(name: str, spec: SourceSpec) -> Source:
    """The adapter for one pull source (a route file's ``sources.<name>``).

    Raises :class:`~engine.errors.ConfigError` when the source cannot work: its keys are wrong,
    or the environment variable holding its secret is not set.
    """
    try:
        kind = _source_kind(spec)
        config = kind.config.model_validate(spec.settings)
    except ValidationError as exc:
        raise ConfigError(f"source {name!r}: {_first(exc)}") from exc
    return kind.build(name, config)


def load_routes(site_dir: Path | None = None, *, defaults: Path | None = None) -> RouteSet:
    """The route files (:func:`engine.routes.loader.read_routes`) with every destination's and
    pull source's keys checked by its adapter's config model. Raises :class:`ConfigError`
    naming file, line and key.
    """
    routes = loader.read_routes(
        site_dir,
        defaults=defaults,
        check_destination=destination_config,
        check_source=source_config,
    )
    check_epic_routes(routes)  # what Epic takes (documents as FHIR), beyond each key's check
    return routes


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    return f"{key}: {err['msg']}" if key else err["msg"]
