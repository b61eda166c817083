"""Load mapping files: the built-in defaults, with a site directory layered over them.

A site directory (``ENGINE_MAPPINGS_DIR``) has the same layout as ``engine/mappings/specs/``. A file
there *replaces* the default file of the same name (``segments/PID.yaml`` replaces the built-in PID
map), and new files add to the set (``segments/ZPD.yaml`` for a Z-segment). ``site.yaml`` holds site
settings (time zones, identifier systems, which identifier is the MRN).

Every problem stops loading with the file, the line and the key: ``segments/PID.yaml, line 12,
rules[3].table: no code table named 'sex'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine.errors import ConfigError
from engine.mappings.spec import CodeTable, DatatypeMap, MessageMap, SegmentMap, SiteConfig
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


def _files(root: Path, kind: str) -> list[Path]:
    d = root / kind
    return sorted(d.glob("*.yaml")) if d.is_dir() else []


def load_files(site_dir: Path | None = None, *, defaults: Path | None = None) -> MappingFiles:
    """Load the defaults, then the site directory over them. Raises :class:`ConfigError`."""
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
                spec = source.validate(model)
                name = _name_of(spec)
                if path.stem != name:
                    raise ConfigError(
                        f"{where}, line 1: the file must be named after what it maps "
                        f"({name}.yaml), so a site file of the same name replaces it"
                    )
                store[name] = spec
                out.origin[f"{kind}/{name}"] = where
                out.sources[f"{kind}/{name}"] = source
        _attach(out)
        site = root / "site.yaml"
        if site.is_file():
            source = read_yaml(site, f"{prefix}site.yaml")
            out.site = source.validate(SiteConfig)
            out.sources["site"] = source
            out.origin["site"] = f"{prefix}site.yaml"
    return out


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
