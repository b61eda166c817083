"""Documents to FHIR: a stored document's metadata → DocumentReference, by a mapping file.

A document (:class:`~engine.documents.model.DocumentInfo`) is mapped by
``specs/documents/document_reference.yaml``: a list of rules, each writing one element of the
DocumentReference (https://hl7.org/fhir/R4/documentreference.html) from a constant, a field of
the document, or a value the engine makes from it (``$type`` from the document type table,
``$patient`` from the MRN, ``$attachment`` from the bytes' media type, size and hash ...; the
file's comments list them). The file is data an IT admin reads and changes, as the HL7v2 maps
are; each rule's FHIR path is checked against the R4 model when the engine starts
(:mod:`engine.mappings.fhir_paths`), as is that what a ``$`` value makes is the type the element
has, and every DocumentReference made is validated (:mod:`engine.mappings.fhir_validate`).

The mapped body (what a route with ``mapping: fhir`` delivers, in a
:class:`~engine.documents.model.DocumentEnvelope`) holds the DocumentReference and the Binary's
metadata, without data: the adapter reads the bytes from the store when it sends.

``attachment.hash`` is the base64 of the bytes' SHA-1 (FHIR R4 Attachment.hash). The store keeps
SHA-256 only, so the processor computes the SHA-1 once, streaming the stored chunks, when a route
maps the document to FHIR (:func:`sha1_base64`), and gives it here; every FHIR adapter then has
it without reading the bytes twice. :func:`inline_attachment` puts the data in for adapters that
send it inline.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.documents.model import DocumentInfo
from engine.errors import ConfigError
from engine.mappings.document_types import DocumentTypes
from engine.mappings.fhir_paths import PathError, Target, root, shape_problems, walk
from engine.mappings.fhir_validate import validate_resource
from engine.mappings.spec import SiteConfig
from engine.mappings.transforms import TRANSFORMS
from engine.mappings.transforms.contract import TransformContext
from engine.yamlfile import YamlFile, read_yaml

__all__ = [
    "DOCUMENT_FIELDS",
    "MADE",
    "DocumentMap",
    "document_reference",
    "fhir_body",
    "inline_attachment",
    "load_document_maps",
    "patient_system",
    "sha1_base64",
]

#: the fields of a document a rule may read (``from: title``)
DOCUMENT_FIELDS = frozenset(DocumentInfo.__dataclass_fields__)
#: the values the engine makes (``from: $type``), with the FHIR type each one is
MADE: dict[str, str] = {
    "$type": "CodeableConcept",
    "$category": "CodeableConcept",
    "$patient": "Reference",
    "$author": "Reference",
    "$encounter": "Reference",
    "$appointment": "Reference",
    "$attachment": "Attachment",
    "$content_id": "Identifier",
    "$unique_number": "Identifier",
    "$replaces": "Reference",
    "$appends": "Reference",
    "$now": "instant",
}
#: the FHIR primitives a document's field (text) may be written to
_TEXT_TYPES = frozenset(
    {"string", "markdown", "code", "id", "uri", "url", "date", "dateTime", "instant"}
)


class DocumentRule(BaseModel):
    """One element of the DocumentReference: a constant (``value``) or a source (``from``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    fhir: str = Field(..., min_length=1)
    from_: str | None = Field(None, alias="from")
    value: Any = None
    wrap: dict[str, Any] | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DocumentRule:
        if (self.from_ is None) == (self.value is None):
            raise ValueError("give 'from' (a document field or a $ value) or 'value', not both")
        src = self.from_
        if src is not None and src not in DOCUMENT_FIELDS and src not in MADE:
            raise ValueError(
                f"{src!r} is neither a field of the document ({', '.join(sorted(DOCUMENT_FIELDS))})"
                f" nor a value the engine makes ({', '.join(MADE)})"
            )
        return self


class DocumentMap(BaseModel):
    """A document mapping file: the resource it makes and its rules, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource: str
    note: str | None = None
    rules: list[DocumentRule]


def load_document_maps(
    site_dir: Path | None = None,
    *,
    defaults: Path | None = None,
    sources: dict[str, YamlFile] | None = None,
) -> dict[str, DocumentMap]:
    """``documents/*.yaml`` of the built-in specs, then of a site directory (a site file of the
    same name replaces the built-in one); each rule's path checked against FHIR R4. Raises
    :class:`ConfigError` naming the file, the line and the key."""
    from engine.mappings.loader import default_specs_dir

    roots = [("(built-in) ", defaults or default_specs_dir())]
    if site_dir is not None:
        roots.append((f"{site_dir}/", site_dir))
    out: dict[str, DocumentMap] = {}
    for prefix, base in roots:
        folder = base / "documents"
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            source = read_yaml(path, f"{prefix}documents/{path.name}")
            spec = source.validate(DocumentMap)
            _check_paths(spec, source)
            out[path.stem] = spec
            if sources is not None:
                sources[f"documents/{path.stem}"] = source
    return out


def _check_paths(spec: DocumentMap, source: YamlFile) -> None:
    """Every rule's path against the R4 model, and what its source makes against the element."""
    try:
        start = root(spec.resource)
    except PathError as exc:
        raise source.error(("resource",), str(exc)) from None
    for i, rule in enumerate(spec.rules):
        key = ("rules", i)
        try:
            target = walk(start, rule.fhir, writes=True, label=spec.resource)
        except PathError as exc:
            raise source.error((*key, "fhir"), str(exc)) from None
        targets = [target]
        if rule.wrap is not None:
            problems, targets = shape_problems(target, rule.wrap)
            if problems:
                at, message = problems[0]
                raise source.error((*key, "wrap", *at), message)
            if len(targets) != 1:
                raise source.error((*key, "wrap"), "a wrap must hold $value exactly once")
        if rule.from_ is not None:
            problem = _fits(rule.from_, targets[0])
            if problem:
                raise source.error((*key, "from"), f"{rule.fhir}: {problem}")


def _fits(source: str, target: Target) -> str | None:
    made = MADE.get(source)
    if made is None:  # a document field: text
        if target.model is not None or target.fhir_type not in _TEXT_TYPES:
            return f"a {target.fhir_type} in FHIR R4: a document field (text) cannot fill it"
        return None
    if made != target.fhir_type:
        return f"a {target.fhir_type} in FHIR R4, but {source} makes a {made}"
    return None


# -- mapping -------------------------------------------------------------------------------------


def sha1_base64(chunks: Iterable[bytes]) -> str:
    """The base64 of the SHA-1 of the bytes (FHIR R4 Attachment.hash), streamed chunk by chunk."""
    digest = hashlib.sha1(usedforsecurity=False)
    for chunk in chunks:
        digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")


def _context(site: SiteConfig) -> TransformContext:
    return TransformContext(
        timezone=site.timezone,
        identifier_systems=tuple(site.identifier_systems.items()),
        identifier_system_base=site.identifier_system_base,
    )


def patient_system(authority: str, site: SiteConfig) -> str | None:
    """The identifier system of an MRN of ``authority``, as PID-3.4 gives it to
    Patient.identifier.system (the ``identifier_system`` transform); the site's MRN authority
    when the document names none."""
    authority = authority or site.mrn_authority or ""
    if not authority:
        return None
    system = TRANSFORMS["identifier_system"].inbound([authority], _context(site))
    return str(system) if system else None


def _made(
    info: DocumentInfo, types: DocumentTypes, site: SiteConfig, now: datetime, sha1: str | None
) -> dict[str, Any]:
    dtype = types.get(info.document_type)
    patient_id: dict[str, Any] = {"value": info.patient_mrn}
    system = patient_system(info.patient_authority, site)
    if system:
        patient_id = {"system": system, "value": info.patient_mrn}
    attachment: dict[str, Any] = {"contentType": info.media_type, "size": info.size}
    if sha1:
        attachment["hash"] = sha1
    if info.title or info.file_name:
        attachment["title"] = info.title or info.file_name
    if info.document_date:
        attachment["creation"] = info.document_date
    base = site.identifier_system_base
    stamp = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    return {
        "$type": dtype.type_concept(),
        "$category": dtype.category_concept(),
        "$patient": {"type": "Patient", "identifier": patient_id},
        "$author": {"display": info.author} if info.author else None,
        "$encounter": (
            {"type": "Encounter", "identifier": {"value": info.encounter}}
            if info.encounter
            else None
        ),
        "$appointment": (
            {"type": "Appointment", "identifier": {"value": info.appointment}}
            if info.appointment
            else None
        ),
        "$attachment": attachment,
        "$content_id": {"system": f"{base}document-sha256", "value": info.sha256},
        "$unique_number": (
            {
                "system": f"{base}document-number:{quote(info.sender, safe='')}",
                "value": info.unique_number,
            }
            if info.unique_number
            else None
        ),
        "$replaces": _parent(info, base) if info.relation == "replaces" else None,
        "$appends": _parent(info, base) if info.relation == "appends" else None,
        "$now": stamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _parent(info: DocumentInfo, base: str) -> dict[str, Any] | None:
    """The earlier document an addendum or replacement relates to (TXA-13), by the number its
    sender gave it: the identifier its own DocumentReference carries as masterIdentifier."""
    if not info.parent_number:
        return None
    return {
        "type": "DocumentReference",
        "identifier": {
            "system": f"{base}document-number:{quote(info.sender, safe='')}",
            "value": info.parent_number,
        },
    }


def _put(out: dict[str, Any], path: str, value: Any) -> None:
    steps = path.split(".")
    here = out
    for step in steps[:-1]:
        here = here.setdefault(step, {})
    last = steps[-1]
    if last.endswith("[]"):
        here.setdefault(last[:-2], []).append(value)
    else:
        here[last] = value


def _wrapped(shape: Any, value: Any) -> Any:
    if shape == "$value":
        return value
    if isinstance(shape, dict):
        return {k: _wrapped(v, value) for k, v in shape.items()}
    if isinstance(shape, list):
        return [_wrapped(v, value) for v in shape]
    return shape


def document_reference(
    info: DocumentInfo,
    spec: DocumentMap,
    types: DocumentTypes,
    site: SiteConfig,
    *,
    now: datetime | None = None,
    sha1: str | None = None,
) -> dict[str, Any]:
    """The DocumentReference of ``info`` by ``spec``, validated against FHIR R4(B); raises
    :class:`~engine.errors.ConversionError` for a type the table lacks or an invalid result."""
    made = _made(info, types, site, now or datetime.now(UTC), sha1)
    out: dict[str, Any] = {"resourceType": spec.resource}
    for rule in spec.rules:
        if rule.value is not None:
            value = rule.value
        else:
            assert rule.from_ is not None
            if rule.from_ in MADE:
                value = made[rule.from_]
            else:
                raw = getattr(info, rule.from_)
                value = None if raw is None or raw == "" else str(raw)
        if value is None:
            continue
        if rule.wrap is not None:
            value = _wrapped(rule.wrap, value)
        _put(out, rule.fhir, value)
    validate_resource(out, where=spec.resource)
    return out


def fhir_body(
    info: DocumentInfo,
    mappings: Any,
    *,
    now: datetime | None = None,
    sha1: str | None = None,
) -> dict[str, Any]:
    """A ``fhir`` document envelope's body: the DocumentReference (by the loaded
    ``documents/document_reference.yaml``) and the Binary's metadata (no data)."""
    from engine.mappings.document_types import document_types

    files = getattr(mappings, "files", mappings)
    spec = files.documents.get("document_reference")
    if spec is None:
        raise ConfigError("no documents/document_reference.yaml mapping file is loaded")
    docref = document_reference(info, spec, document_types(files), files.site, now=now, sha1=sha1)
    return {
        "DocumentReference": docref,
        "Binary": {"resourceType": "Binary", "contentType": info.media_type},
    }


def inline_attachment(docref: dict[str, Any], data: bytes) -> dict[str, Any]:
    """A copy of ``docref`` whose first attachment carries ``data`` (base64) and its SHA-1 hash:
    for a destination that takes the document inline (a folder, a server without Binary)."""
    out = dict(docref)
    content = [dict(c) for c in out.get("content", [])] or [{"attachment": {}}]
    attachment = dict(content[0].get("attachment", {}))
    attachment["data"] = base64.b64encode(data).decode("ascii")
    attachment["hash"] = sha1_base64([data])
    attachment.setdefault("size", len(data))
    content[0] = {**content[0], "attachment": attachment}
    out["content"] = content
    return out
