"""The document type table (``specs/tables/document_types.yaml``): our codes and their names
elsewhere.

A document carries the site's own type code (``insurance-card``, ``consent``, ``referral`` ...).
Each destination wants another vocabulary for it: a FHIR server a LOINC document ontology code in
DocumentReference.type (https://hl7.org/fhir/R4/documentreference.html; US Core binds the type to
LOINC), an HL7v2 receiver a TXA-2 code (HL7 v2.5.1 chapter 9.6.1, table 0270, a user-defined
table), athenahealth a document class and subclass (its document classification guide). One
table holds all three, so an IT admin changes one file when the practice adds a type.

The built-in table is layered with the site's (``ENGINE_MAPPINGS_DIR/tables/document_types.yaml``)
type by type: a type the site file lists replaces the built-in one of the same code, new codes add
types, and the site's ``default`` (the type an MDM with an unknown TXA-2 gets) replaces the
built-in one. Errors name the file, the line and the key.

The adapters and the intake call :func:`document_types` (the whole table) or
:meth:`DocumentTypes.get` (one type, raising a clear error for an unknown code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.errors import ConfigError, ConversionError
from engine.yamlfile import YamlFile, read_yaml

__all__ = [
    "ATHENA_CLASSES",
    "FILE",
    "LOINC_SYSTEM",
    "DocumentType",
    "DocumentTypes",
    "document_types",
    "load_document_types",
]

#: where the table lives under a specs directory (built-in or the site's)
FILE = "tables/document_types.yaml"
LOINC_SYSTEM = "http://loinc.org"
#: athenahealth's document classes that take documents through its API (its "Management of
#: Class-Specific Documents" workflow lists admin, clinical, encounter, imaging/diagnostic
#: results, lab results, medical records, phone messages, physician authorizations, orders)
ATHENA_CLASSES = frozenset(
    {
        "ADMIN",
        "CLINICALDOCUMENT",
        "ENCOUNTERDOCUMENT",
        "IMAGINGRESULT",
        "LABRESULT",
        "MEDICALRECORD",
        "PATIENTCASE",
        "PHONEMESSAGE",
        "PHYSICIANAUTH",
        "ORDER",
    }
)
_CODE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_LOINC_RE = re.compile(r"^[0-9]{1,7}-[0-9]$")
_TXA2_RE = re.compile(r"^[A-Za-z0-9_.-]{1,30}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Loinc(_Strict):
    code: str
    display: str = Field(..., min_length=1)

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not _LOINC_RE.match(v):
            raise ValueError(f"{v!r} is not a LOINC code (digits, '-', a check digit: 64290-0)")
        return v


class _Coding(_Strict):
    system: str = Field(..., min_length=1)
    code: str = Field(..., min_length=1)
    display: str | None = None


class _Athena(_Strict):
    class_: str = Field(..., alias="class")
    subclass: str | None = None

    @model_validator(mode="after")
    def _known(self) -> _Athena:
        if self.class_ not in ATHENA_CLASSES:
            raise ValueError(
                f"athena class {self.class_!r} is not one of {', '.join(sorted(ATHENA_CLASSES))}"
            )
        if self.subclass is not None and not self.subclass.startswith(self.class_ + "_"):
            raise ValueError(
                f"athena subclass {self.subclass!r} must start with its class ({self.class_}_)"
            )
        return self


class _TypeSpec(_Strict):
    display: str = Field(..., min_length=1)
    loinc: _Loinc | None = None
    category: _Coding | None = None
    txa2: str
    athena: _Athena

    @field_validator("txa2")
    @classmethod
    def _txa2(cls, v: str) -> str:
        if not _TXA2_RE.match(v):
            raise ValueError(f"{v!r} is not a TXA-2 code (letters, digits, '_', '.', '-'; ≤ 30)")
        return v


class _TableFile(_Strict):
    note: str | None = None
    default: str | None = None
    types: dict[str, _TypeSpec] = {}

    @field_validator("types")
    @classmethod
    def _codes(cls, v: dict[str, _TypeSpec]) -> dict[str, _TypeSpec]:
        for code in v:
            if not _CODE_RE.match(code):
                raise ValueError(
                    f"type code {code!r} must be lower-case letters, digits and '-' (consent)"
                )
        return v


@dataclass(frozen=True)
class DocumentType:
    """One document type and its names elsewhere (see the module docstring)."""

    code: str
    display: str
    txa2: str
    athena_class: str
    athena_subclass: str | None = None
    loinc_code: str | None = None
    loinc_display: str | None = None
    category: dict[str, str] | None = None
    #: the file it came from (``(built-in) tables/document_types.yaml``)
    origin: str = ""

    def type_concept(self) -> dict[str, Any]:
        """DocumentReference.type: the LOINC coding (when there is one) and the display."""
        concept: dict[str, Any] = {"text": self.display}
        if self.loinc_code:
            coding = {"system": LOINC_SYSTEM, "code": self.loinc_code}
            if self.loinc_display:
                coding["display"] = self.loinc_display
            concept["coding"] = [coding]
        return concept

    def category_concept(self) -> dict[str, Any] | None:
        """DocumentReference.category[0], or None."""
        return {"coding": [dict(self.category)]} if self.category else None


@dataclass(frozen=True)
class DocumentTypes:
    """The whole table: types by code, and the type an unknown TXA-2 maps to."""

    types: dict[str, DocumentType] = field(default_factory=dict)
    default: str = "other"

    def get(self, code: str) -> DocumentType:
        """The type of ``code``; raises :class:`ConversionError` naming the table for an unknown
        one (a document whose type the table lacks cannot be mapped: add the type)."""
        found = self.types.get(code)
        if found is None:
            known = ", ".join(sorted(self.types))
            raise ConversionError(
                f"document type {code!r} is not in the document type table ({FILE}; known: {known})"
            )
        return found

    def from_txa2(self, txa2: str) -> str:
        """Our type code for an MDM's TXA-2 (case-insensitive), else the table's default."""
        wanted = txa2.strip().upper()
        for t in self.types.values():
            if t.txa2.upper() == wanted:
                return t.code
        return self.default

    def __contains__(self, code: object) -> bool:
        return code in self.types


def _spec_to_type(code: str, spec: _TypeSpec, origin: str) -> DocumentType:
    return DocumentType(
        code=code,
        display=spec.display,
        txa2=spec.txa2,
        athena_class=spec.athena.class_,
        athena_subclass=spec.athena.subclass,
        loinc_code=spec.loinc.code if spec.loinc else None,
        loinc_display=spec.loinc.display if spec.loinc else None,
        category=spec.category.model_dump(exclude_none=True) if spec.category else None,
        origin=origin,
    )


def load_document_types(
    site_dir: Path | None = None,
    *,
    defaults: Path | None = None,
    sources: dict[str, YamlFile] | None = None,
) -> DocumentTypes:
    """The built-in table with the site's over it, type by type. Raises :class:`ConfigError`
    naming the file, the line and the key (two types with one TXA-2 code, a default that is no
    type, an athena class athena does not have ...)."""
    from engine.mappings.loader import default_specs_dir

    roots = [("(built-in) ", defaults or default_specs_dir())]
    if site_dir is not None:
        roots.append((f"{site_dir}/", site_dir))
    types: dict[str, DocumentType] = {}
    default: tuple[str, YamlFile] | None = None
    last: YamlFile | None = None
    for prefix, root in roots:
        path = root / FILE
        if not path.is_file():
            continue
        source = read_yaml(path, f"{prefix}{FILE}")
        spec = source.validate(_TableFile)
        for code, tspec in spec.types.items():
            types[code] = _spec_to_type(code, tspec, source.where)
        if spec.default is not None:
            default = (spec.default, source)
        last = source
        if sources is not None:
            sources["tables/document_types"] = source
    if last is None:
        return DocumentTypes()
    table = DocumentTypes(types, default[0] if default else "other")
    _check(table, last, default[1] if default else last)
    return table


def _check(table: DocumentTypes, last: YamlFile, default_src: YamlFile) -> None:
    """What no single file can say: the default is a type, no two types share a TXA-2 code."""
    if table.default not in table.types:
        raise default_src.error(
            ("default",),
            f"no type {table.default!r} in the table (types: {', '.join(sorted(table.types))})",
        )
    seen: dict[str, str] = {}
    for t in table.types.values():
        other = seen.get(t.txa2.upper())
        if other is not None:
            where = last if t.origin == last.where else None
            message = f"TXA-2 code {t.txa2!r} is already the code of type {other!r}"
            if where is not None:
                raise where.error(("types", t.code, "txa2"), message)
            raise ConfigError(f"{t.origin}, types.{t.code}.txa2: {message}")
        seen[t.txa2.upper()] = t.code


def document_types(mappings: Any) -> DocumentTypes:
    """The document type table of a loaded mapping set (:class:`engine.mappings.Mappings`, or
    its :class:`~engine.mappings.loader.MappingFiles`)."""
    files = getattr(mappings, "files", mappings)
    table = getattr(files, "document_types", None)
    if not isinstance(table, DocumentTypes):
        raise ConfigError("the mapping set was loaded without the document type table")
    return table
