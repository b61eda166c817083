"""Mappings: HL7v2 ⇄ FHIR R4 as YAML data an IT admin can read and change.

``load_mappings(site_dir)`` reads the built-in files and a site directory over them, validates them
and compiles them; ``Mappings.to_fhir(message)`` gives a transaction Bundle and
``Mappings.to_hl7(bundle, ...)`` an HL7v2 v2.5.1 message. docs/MAPPINGS.md is the guide for mapping
authors.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.hl7v2.codec import Message
from engine.mappings.inbound import InboundMapper
from engine.mappings.loader import MappingFiles, default_specs_dir, load_files
from engine.mappings.provenance import ElementSource

__all__ = ["MappingFiles", "Mappings", "default_specs_dir", "load_mappings"]


class Mappings:
    """The compiled mapping set, both directions (the outbound side is compiled on first use)."""

    def __init__(self, files: MappingFiles) -> None:
        self.files = files
        self.inbound = InboundMapper(files)
        self._outbound: Any = None
        self._traced: InboundMapper | None = None

    def to_fhir(self, message: Message, warnings: list[str] | None = None) -> dict[str, Any]:
        """HL7v2 message → FHIR transaction Bundle (dict).

        ``warnings``, when given, receives a line for each element the message carries that no
        mapping takes (``PID-9 (2 repetitions)``, ``segment ZPI``), so nothing is dropped in
        silence; a message that cannot make its main resource raises instead."""
        return self.inbound.to_bundle(message, warnings)

    def to_fhir_traced(
        self, message: Message, warnings: list[str] | None = None
    ) -> tuple[dict[str, Any], list[ElementSource]]:
        """:meth:`to_fhir`, and which mapping file and line made each element of the Bundle
        (engine.mappings.provenance). The traced functions are compiled on first use, beside
        the ordinary ones, which stay as fast as they were."""
        if self._traced is None:
            self._traced = InboundMapper(self.files, trace=True)
        return self._traced.to_bundle_traced(message, warnings)

    def to_hl7(
        self,
        data: Mapping[str, Any],
        *,
        control_id: str,
        timestamp: str | datetime | None = None,
        event: str | None = None,
        message: str | None = None,
        warnings: list[str] | None = None,
    ) -> Message:
        """A FHIR Bundle or resource → an HL7v2 message (ADT, SIU or DFT, by what it holds).

        ``warnings``, when given, receives what the input holds that the message cannot carry."""
        if self._outbound is None:
            from engine.mappings.outbound import OutboundMapper

            self._outbound = OutboundMapper(self.files)
        result: Message = self._outbound.to_hl7(
            data,
            event=event,
            control_id=control_id,
            timestamp=timestamp,
            message=message,
            warnings=warnings,
        )
        return result


def load_mappings(site_dir: Path | None = None) -> Mappings:
    """Load, validate and compile the mapping files (raises ConfigError naming file/line/key).

    Before anything is compiled, every FHIR path is checked against the R4 model and every name
    a rule uses against what is loaded (:mod:`engine.mappings.check`)."""
    from engine.mappings.check import check_files
    from engine.mappings.outbound_spec import load_outbound

    files = load_files(site_dir)
    files.outbound = load_outbound(site_dir, sources=files.sources)
    # documents: the type table and the DocumentReference mapping file (their paths are checked
    # as they are read)
    from engine.mappings.document_types import load_document_types
    from engine.mappings.documents import load_document_maps

    files.document_types = load_document_types(site_dir, sources=files.sources)
    files.documents = load_document_maps(site_dir, sources=files.sources)
    check_files(files)
    return Mappings(files)
