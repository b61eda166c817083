"""The content-based router: which routes take a message (Enterprise Integration Patterns).

Pure and fast: each route's criteria are compiled once into sets and parsed paths, and a match
reads only the MSH fields and condition paths it needs from the lazily parsed message. No I/O.

An HL7v2 message is matched on MSH-9.1 (message code), MSH-9.2 (trigger event), MSH-3.1 (sending
application namespace ID), MSH-4.1 (sending facility namespace ID) (HL7 v2.5.1 section 2.14.9)
and the route's conditions; a FHIR input on its resource type; a document (engine/documents) on its
type, its sender and its practice, by the routes that take documents only (``kind: document`` or a
document criterion: a catch-all pass-through route does not take them). Routes come back in the
order their files list them; a message no route takes gets an empty list (the caller decides what
that means).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.documents.model import DocumentInfo
from engine.hl7v2.codec import Message
from engine.hl7v2.path import Path
from engine.routes.loader import RouteSet
from engine.routes.spec import Route

__all__ = ["Router"]


def _set(values: list[str] | None) -> frozenset[str] | None:
    return frozenset(values) if values else None


@dataclass(frozen=True, slots=True)
class _Test:
    path: Path
    in_: frozenset[str] | None
    not_in: frozenset[str] | None
    present: bool | None

    def holds(self, message: Message) -> bool:
        value = message.get(self.path)
        if self.in_ is not None and value not in self.in_:
            return False
        if self.not_in is not None and value in self.not_in:
            return False
        return self.present is None or bool(value) == self.present


@dataclass(frozen=True, slots=True)
class _Compiled:
    route: Route
    input: str
    message: frozenset[str] | None
    trigger: frozenset[str] | None
    application: frozenset[str] | None
    facility: frozenset[str] | None
    resource_type: frozenset[str] | None
    tests: tuple[_Test, ...]
    document_type: frozenset[str] | None
    practice: frozenset[str] | None

    @classmethod
    def of(cls, route: Route) -> _Compiled:
        m = route.match
        tests = tuple(
            _Test(
                c.parsed_path,
                frozenset(c.in_) if c.in_ is not None else None,
                frozenset(c.not_in) if c.not_in is not None else None,
                c.present,
            )
            for c in m.conditions
        )
        return cls(
            route,
            route.input,
            _set(m.message),
            _set(m.trigger),
            _set(m.sending_application),
            _set(m.sending_facility),
            _set(m.resource_type),
            tests,
            _set(m.document_type),
            _set(m.practice),
        )


class Router:
    """Matches inputs against a :class:`RouteSet`'s routes."""

    __slots__ = ("routes", "_compiled")

    def __init__(self, routes: RouteSet) -> None:
        self.routes = routes
        self._compiled = tuple(_Compiled.of(r) for r in routes.routes)

    def match(
        self,
        *,
        message: Message | None = None,
        resource_type: str | None = None,
        document: DocumentInfo | None = None,
    ) -> list[Route]:
        """The routes that take an HL7v2 ``message``, a FHIR input of ``resource_type`` or a
        ``document``. Give exactly one of the three.
        """
        if sum(x is not None for x in (message, resource_type, document)) != 1:
            raise TypeError("give exactly one of message=, resource_type= or document=")
        if document is not None:
            return [
                c.route
                for c in self._compiled
                if c.input == "document"
                and (c.document_type is None or document.document_type in c.document_type)
                and (c.practice is None or (document.practice or "") in c.practice)
                and (c.application is None or document.sender in c.application)
            ]
        if resource_type is not None:
            return [
                c.route
                for c in self._compiled
                if c.input in ("fhir", "any")
                and (c.resource_type is None or resource_type in c.resource_type)
            ]
        assert message is not None
        msh = message.msh
        code, trigger = msh.get(9, 1, 1), msh.get(9, 1, 2)
        app, facility = msh.get(3, 1, 1), msh.get(4, 1, 1)
        out: list[Route] = []
        for c in self._compiled:
            if c.input in ("fhir", "document"):
                continue
            if c.message is not None and code not in c.message:
                continue
            if c.trigger is not None and trigger not in c.trigger:
                continue
            if c.application is not None and app not in c.application:
                continue
            if c.facility is not None and facility not in c.facility:
                continue
            if all(t.holds(message) for t in c.tests):
                out.append(c.route)
        return out
