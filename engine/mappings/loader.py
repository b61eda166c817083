"""Load mapping files: the built-in defaults, with a site directory layered over them.

A site directory (``ENGINE_MAPPINGS_DIR``) has the same layout as ``engine/mappings/specs/``. A file
there *replaces* the default file of the same name (``segments/PID.yaml`` replaces the built-in PID
map), and new files add to the set (``segments/ZPD.yaml`` for a Z-segment). ``site.yaml`` holds site
settings (time zones, identifier systems, which identifier is the MRN).

Every problem stops loading with the file, the line and the key: ``segments/PID.yaml, line 12,
rules[3].table: no code table named 'sex'``. A rule of a datatype or segment map that the file's
format refuses (a misspelt key, ``[]`` before the last step of a path) does not stop reading: the
file is kept with its other rules, so that the checks after loading (:mod:`engine.mappings.check`)
walk their FHIR paths too, and the refusal is noted in :attr:`MappingFiles.refused` for them to
raise first, with the count of every other problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError
from engine.mappings.spec import CodeTable, DatatypeMap, MessageMap, Rule, SegmentMap, SiteConfig
from engine.yamlfile import YamlFile, read_yaml

__all__ = ["MappingFiles", "default_specs_dir", "load_files"]

_KINDS: dict[str, type[BaseModel]] = {
    "tables": CodeTable,
    "datatypes": DatatypeMap,
    "segments": SegmentMap,
    "messages": MessageMap,
}


def default_specs_dir() -> Path:
    """The built-in mapping files shipped with the engine."""
    return Path(str(resources.files("engine.mappings") / "specs"))


@dataclass
class MappingFiles:
    """Every mapping file, validated, keyed by name; ``origin`` says which file each came from."""

    tables: dict[str, CodeTable] = field(default_factory=dict)
    datatypes: dict[str, DatatypeMap] = field(default_factory=dict)
    segments: dict[str, SegmentMap] = field(default_factory=dict)
    messages: dict[str, MessageMap] = field(default_factory=dict)
    site: SiteConfig = field(default_factory=SiteConfig)
    origin: dict[str, str] = field(default_factory=dict)
    #: outbound message layouts (engine.mappings.outbound_spec.OutboundMessage), by message code
    outbound: dict[str, Any] = field(default_factory=dict)
    #: each file as read, with the line of every key, by the same key as ``origin``
    #: (``segments/PID``, ``outbound/ADT``): the checks after loading name lines from it
    sources: dict[str, YamlFile] = field(default_factory=dict)
    #: what the file formats refused in rules (the first problem, as an error names it, and how
    #: many more the same file has), raised by the checks after loading before what they find
    refused: list[tuple[str, int]] = field(default_factory=list)
    #: for a map kept without the rules its format refused: the position in the file of each
    #: rule kept (``rules[i]`` of the model is ``rules[kept[i]]`` of the file), by the same key
    kept: dict[str, list[int]] = field(default_factory=dict)
    #: the document type table (engine.mappings.document_types.DocumentTypes) and the document
    #: mapping files (engine.mappings.documents), read by :func:`engine.mappings.load_mappings`
    document_types: Any = None
    documents: dict[str, Any] = field(default_factory=dict)


#: files under a kind's folder that have a format of their own, read by their own loader
#: (the document type table: engine/mappings/document_types.py)
_OWN_FORMAT = frozenset({"tables/document_types.yaml"})


def _files(root: Path, kind: str) -> list[Path]:
    d = root / kind
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.yaml") if f"{kind}/{p.name}" not in _OWN_FORMAT)


def load_files(site_dir: Path | None = None, *, defaults: Path | None = None) -> MappingFiles:
    """Load the defaults, then the site directory over them. Raises :class:`ConfigError`, but
    for refused rules of datatype and segment maps: those are in ``refused``, for the checks."""
    roots = [("", defaults or default_specs_dir())]
    if site_dir is not None:
        if not site_dir.is_dir():
            raise ConfigError(f"{site_dir}: mappings directory not found")
        roots.append((f"{site_dir}/", site_dir))
    out = MappingFiles()
    for prefix, root in roots:
        for kind, model in _KINDS.items():
            store: dict[str, Any] = getattr(out, kind)
            for path in _files(root, kind):
                where = f"{prefix or '(built-in) '}{kind}/{path.name}"
                source = read_yaml(path, where)
                spec, kept = _read(source, model, out.refused)
                name = _name_of(spec)
                if path.stem != name:
                    raise ConfigError(
                        f"{where}, line 1: the file must be named after what it maps "
                        f"({name}.yaml), so a site file of the same name replaces it"
                    )
                store[name] = spec
                out.origin[f"{kind}/{name}"] = where
                out.sources[f"{kind}/{name}"] = source
                if kept is None:
                    out.kept.pop(f"{kind}/{name}", None)
                else:
                    out.kept[f"{kind}/{name}"] = kept
        _attach(out)
        site = root / "site.yaml"
        if site.is_file():
            source = read_yaml(site, f"{prefix}site.yaml")
            out.site = source.validate(SiteConfig)
            out.sources["site"] = source
            out.origin["site"] = f"{prefix}site.yaml"
    return out


def _read(
    source: YamlFile, model: type[BaseModel], refused: list[tuple[str, int]]
) -> tuple[BaseModel, list[int] | None]:
    """The file as ``model``, and for a map kept without the rules its format refuses, the
    position of each rule kept (the refusal added to ``refused``). Raises :class:`ConfigError`
    when the file is refused for more than its rules."""
    try:
        return source.validate(model), None
    except ConfigError as error:
        cause = error.__cause__
        if model not in (DatatypeMap, SegmentMap) or not isinstance(cause, ValidationError):
            raise
        data, count = source.mapping(), len(cause.errors())
        rules = data.get("rules")
        if not isinstance(rules, list):
            raise
        kept = [i for i, rule in enumerate(rules) if _valid_rule(rule)]
        try:
            spec = model.model_validate({**data, "rules": [rules[i] for i in kept]})
        except ValidationError:
            raise error from cause
        # the count of the rest is the checks' to give, with what they find
        text = str(error).removesuffix(f" (and {count - 1} more)" if count > 1 else "")
        refused.append((text, count - 1))
        return spec, kept


def _valid_rule(rule: Any) -> bool:
    try:
        Rule.model_validate(rule)
    except ValidationError:
        return False
    return True


def _attach(out: MappingFiles) -> None:
    """Join segment maps with ``add_to`` to the plans they name."""
    for name, smap in out.segments.items():
        for target in smap.add_to:
            where = out.origin.get(f"segments/{name}", name)
            message, _, plan_name = target.partition(".")
            mm = out.messages.get(message)
            plans = [p.name for p in mm.resources] if mm else []
            if mm is None or plan_name not in plans:
                raise ConfigError(
                    f"{where}, add_to: no resource {plan_name!r} in messages/{message}.yaml"
                    + (f" (it has: {', '.join(plans)})" if plans else "")
                )
            resources = [
                p.model_copy(update={"segments": [*p.segments, name]})
                if p.name == plan_name and name not in p.segments
                else p
                for p in mm.resources
            ]
            out.messages[message] = mm.model_copy(update={"resources": resources})


def _name_of(spec: BaseModel) -> str:
    if isinstance(spec, CodeTable):
        return spec.table
    if isinstance(spec, DatatypeMap):
        return spec.datatype
    if isinstance(spec, SegmentMap):
        return spec.name or spec.segment
    if isinstance(spec, MessageMap):
        return spec.message
    raise TypeError(type(spec))
