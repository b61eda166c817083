"""Mappings: HL7v2 ⇄ FHIR R4 as YAML data an IT admin can read and change.

``load_mappings(site_dir)`` reads the built-in files and a site directory over them, validates them
and compiles them; ``Mappings.to_fhir(message)`` gives a transaction Bundle. docs/MAPPINGS.md is the
guide for mapping authors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.hl7v2.codec import Message
from engine.mappings.inbound import InboundMapper
from engine.mappings.loader import MappingFiles, default_specs_dir, load_files

__all__ = ["MappingFiles", "Mappings", "default_specs_dir", "load_mappings"]


class Mappings:
    """The compiled mapping set, both directions."""

    def __init__(self, files: MappingFiles) -> None:
        self.files = files
        self.inbound = InboundMapper(files)

    def to_fhir(self, message: Message) -> dict[str, Any]:
        """HL7v2 message → FHIR transaction Bundle (dict)."""
        return self.inbound.to_bundle(message)


def load_mappings(site_dir: Path | None = None) -> Mappings:
    """Load, validate and compile the mapping files (raises ConfigError naming file/line/key)."""
    return Mappings(load_files(site_dir))
