"""The outbound mapper: checks the outbound files at start-up, then writes one message per call.

:meth:`OutboundMapper.to_hl7` picks the outbound file (the anchor resource the input holds), reads
its selections (:mod:`.select`), picks the trigger event, writes MSH and walks the file's segment
steps (:mod:`.apply`), then reports what the input holds that no segment took (:mod:`.run`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.errors import ConfigError, ConversionError
from engine.hl7v2.codec import Message
from engine.hl7v2.structure import structure_for
from engine.mappings.loader import MappingFiles
from engine.mappings.outbound.apply import write_segment
from engine.mappings.outbound.fhir import Index, text_of, values_at
from engine.mappings.outbound.plan import MapCompiler
from engine.mappings.outbound.run import Run
from engine.mappings.outbound.select import State, each, map_use, select_all
from engine.mappings.outbound_spec import OutboundMessage, Step, TriggerChoice, load_outbound
from engine.mappings.transforms import TransformContext

__all__ = ["OutboundMapper"]


class OutboundMapper:
    """Compiled mapping files for FHIR → HL7v2 (see :mod:`engine.mappings.outbound`).

    ``messages``: the outbound files (:func:`engine.mappings.outbound_spec.load_outbound`); by
    default the built-in ones."""

    def __init__(
        self, files: MappingFiles, messages: Mapping[str, OutboundMessage] | None = None
    ) -> None:
        self.files = files
        if messages is None:
            # the loader's own ``outbound`` kind once it has one (site files layered), else ours
            messages = getattr(files, "outbound", None) or load_outbound()
        self.messages: dict[str, OutboundMessage] = dict(messages)
        site = files.site
        self._ctx = TransformContext(
            timezone=site.timezone,
            identifier_systems=tuple(site.identifier_systems.items()),
            identifier_system_base=site.identifier_system_base,
        )
        self._compilers: dict[str, MapCompiler] = {}
        for spec in self.messages.values():
            where = f"outbound/{spec.message}.yaml"
            for tname in spec.reverse:
                if tname not in files.tables:
                    raise ConfigError(f"{where}, reverse: no code table named {tname!r}")
            compiler = MapCompiler(files, spec.version, spec.reverse)
            self._compilers[spec.message] = compiler
            self._check_steps(spec, compiler, spec.segments)
            for t in spec.triggers:
                if not (t.structure or structure_for(spec.message, t.trigger)):
                    raise ConfigError(
                        f"{where}: trigger {t.trigger} has no message structure in HL7 table "
                        "0354; give 'structure'"
                    )

    def _check_steps(self, spec: OutboundMessage, compiler: MapCompiler, steps: list[Step]) -> None:
        """Every map a step names exists, maps the step's segment and reads a selection of its
        resource type; compiled now, so a bad file stops start-up."""
        resources = {s.name: s.resource for s in spec.select}
        where = f"outbound/{spec.message}.yaml"
        for step in steps:
            if step.segments is not None:
                self._check_steps(spec, compiler, step.segments)
                continue
            own = step.from_ or (step.each or "").split(".", 1)[0] or None
            for use in step.maps:
                name, sel, accept, picks = map_use(use)
                smap = self.files.segments.get(name)
                if smap is None:
                    raise ConfigError(
                        f"{where}: {step.segment} names segment map {name!r}; "
                        f"there is no segments/{name}.yaml"
                    )
                if smap.segment != step.segment:
                    raise ConfigError(
                        f"{where}: segment map {name!r} maps {smap.segment}, not {step.segment}"
                    )
                sel = sel or own
                if sel is None:
                    raise ConfigError(
                        f"{where}: {step.segment} map {name!r} reads no selection "
                        "(give the step 'from' or 'each', or the map 'from')"
                    )
                if resources[sel] != smap.resource and resources[sel] not in accept:
                    raise ConfigError(
                        f"{where}: segment map {name!r} reads a {smap.resource}, but selection "
                        f"{sel!r} holds {resources[sel]} resources"
                    )
                compiler.segment(name, picks)

    # -- messages --------------------------------------------------------------------------------

    def to_hl7(
        self,
        data: Mapping[str, Any],
        *,
        event: str | None = None,
        control_id: str,
        timestamp: str | datetime | None = None,
        message: str | None = None,
        receiving: tuple[str, str] = ("", ""),
        warnings: list[str] | None = None,
    ) -> Message:
        """Write one HL7v2 message from a FHIR Bundle (any type) or a single resource.

        ``warnings``, when given, receives a line for each thing the input holds that the message
        cannot carry (naming the FHIR element), so nothing is dropped without a word.

        ``event``: ``new`` (the default), ``update``, ``reschedule``, ``modify``, or a trigger
        event code (``A08``); ``message`` forces the message type when the input could make
        several (by default the outbound file with the highest priority whose anchor resource is
        in the input). ``timestamp`` is MSH-7 (an HL7 DTM or a datetime; now by default).
        Raises :class:`ConversionError` naming the FHIR element that is missing or wrong."""
        if not isinstance(data, Mapping) or not isinstance(data.get("resourceType"), str):
            raise ConversionError("not a FHIR resource or Bundle (no resourceType)")
        index = Index(data)
        spec = self._spec_for(index, message)
        ts = _dtm(timestamp, self.files.site.timezone)
        run = Run(self._ctx, "", index)
        state = State(spec, self._compilers[spec.message], run, {}, {}, {}, {})
        anchor = select_all(state)
        choice = self._trigger(spec, anchor, event)
        run.trigger = choice.trigger
        structure = choice.structure or structure_for(spec.message, choice.trigger)
        site = self.files.site
        msg = Message.new(
            f"{spec.message}^{choice.trigger}^{structure}",
            control_id=control_id,
            timestamp=ts,
            version=spec.version,
            sending=(site.sending_application, site.sending_facility),
            receiving=receiving,
        )
        state.specials = {
            "$trigger": choice.trigger,
            "$timestamp": ts,
            "$control_id": control_id,
            "$sending_application": site.sending_application,
        }
        _write_steps(spec.segments, state, msg, set())
        if warnings is not None:
            # one line per list: Coverage.class[1] (type subgroup), [3] (type rxgroup): ...
            run.note_unplaced()
            warnings.extend(run.lines())
        return msg

    def _spec_for(self, index: Index, message: str | None) -> OutboundMessage:
        """The outbound file named, else the one of highest priority whose anchor (or, without
        any anchor, one of whose ``also_from`` types) the input holds."""
        if message is not None:
            spec = self.messages.get(message)
            if spec is None:
                raise ConversionError(
                    f"no outbound file for {message} (have: {', '.join(sorted(self.messages))})"
                )
            return spec
        types = {r["resourceType"] for r in index.resources}
        best: OutboundMessage | None = None
        for spec in self.messages.values():
            anchor = _anchor_type(spec)
            if anchor in types and (best is None or spec.priority > best.priority):
                best = spec
        for spec in self.messages.values() if best is None else ():
            if types & set(spec.also_from) and (best is None or spec.priority > best.priority):
                best = spec
        if best is None:
            wanted = sorted(
                {_anchor_type(m) for m in self.messages.values()}
                | {t for m in self.messages.values() for t in m.also_from}
            )
            raise ConversionError(
                "nothing to write as HL7v2: the input has no "
                + " or ".join(wanted)
                + f" (it has {', '.join(sorted(types)) or 'no resources'})"
            )
        return best

    def _trigger(
        self, spec: OutboundMessage, anchor: dict[str, Any], event: str | None
    ) -> TriggerChoice:
        """The trigger the event names, else the first whose event, site kind and anchor
        values fit."""
        for t in spec.triggers:
            if event is not None and t.trigger == event:
                return t
        ev = event or "new"
        site_kind = self.files.site.outbound_adt
        for t in spec.triggers:
            if t.event is not None and ev not in t.event:
                continue
            if t.site is not None and site_kind not in t.site:
                continue
            if all(
                any(text_of(v) in allowed for v in values_at(anchor, path))
                for path, allowed in t.anchor.items()
            ):
                return t
        rtype = anchor["resourceType"]
        said = ", ".join(
            f"{rtype}.{p} " + ("/".join(str(v) for v in values_at(anchor, p)) or "(none)")
            for p in sorted({p for t in spec.triggers for p in t.anchor})
        )
        raise ConversionError(
            f"no {spec.message} trigger event for the event {ev!r}"
            + (f" with {said}" if said else "")
            + f" (triggers: {', '.join(t.trigger for t in spec.triggers)})"
        )


def _anchor_type(spec: OutboundMessage) -> str:
    return next(s for s in spec.select if s.name == spec.anchor).resource


def _write_steps(
    steps: list[Step], state: State, msg: Message, given: set[tuple[int, str, int]]
) -> None:
    """The segment steps in order; a repeating step or group once per resource (or element)."""
    for step in steps:
        if step.segments is not None:
            assert step.each is not None
            for name, item in list(each(step.each, state)):
                saved = dict(state.current)
                state.current[name] = item
                _write_steps(step.segments, state, msg, set())
                state.current = saved
        elif step.each is not None:
            for name, item in list(each(step.each, state)):
                saved = dict(state.current)
                state.current[name] = item
                write_segment(step, state, msg, set())
                state.current = saved
        else:
            write_segment(step, state, msg, given)


def _dtm(ts: str | datetime | None, tz: str) -> str:
    """MSH-7: an HL7 DTM as given, or a datetime (now by default) in the site's time zone."""
    if ts is None:
        ts = datetime.now(ZoneInfo(tz))
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=ZoneInfo(tz))
        return ts.strftime("%Y%m%d%H%M%S%z")
    return ts
