"""Load mapping files: the built-in defaults, with a site directory layered over them.

A site directory (``ENGINE_MAPPINGS_DIR``) has the same layout as ``engine/mappings/specs/``. A file
there *replaces* the default file of the same name (``segments/PID.yaml`` replaces the built-in PID
map), and new files add to the set (``segments/ZPD.yaml`` for a Z-segment). ``site.yaml`` holds site
settings (time zones, identifier systems, which identifier is the MRN).

Every problem stops loading with the file, the line and the key: ``segments/PID.yaml, line 12,
rules[3].table: no code table named 'sex'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError
from engine.mappings.spec import CodeTable, DatatypeMap, MessageMap, SegmentMap, SiteConfig

__all__ = ["MappingFiles", "default_specs_dir", "load_files"]

M = TypeVar("M", bound=BaseModel)

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


#: libyaml's parser where PyYAML was built with it (about ten times faster than the pure-Python
#: one: start-up reads some hundred mapping files), with the same node marks for line numbers
_LineLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose_lines(text: str, where: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        # the construct that failed (context) is where to look; the problem may be lines later
        ctx = getattr(exc, "context_mark", None)
        mark = getattr(exc, "problem_mark", None)
        first = ctx or mark
        line = f", line {first.line + 1}" if first is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if ctx is not None and mark is not None and mark.line != ctx.line:
            problem += f" at line {mark.line + 1}"
        raise ConfigError(f"{where}{line}: not valid YAML ({problem})") from exc
    lines: dict[tuple[Any, ...], int] = {}

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value
                lines[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, i))

    if node is not None:
        walk(node, ())
    data = yaml.load(text, Loader=_LineLoader) if node is not None else None
    return data, lines


def _loc_text(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_file(path: Path, model: type[M], where: str) -> M:
    """Read and validate one mapping file; errors name file, line and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read ({exc})") from exc
    data, lines = _compose_lines(text, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}, line 1: expected a mapping of keys (e.g. 'segment: PID')")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function")))
        # find the deepest located prefix for a line number
        line = 1
        for i in range(len(loc), -1, -1):
            if loc[:i] in lines:
                line = lines[loc[:i]]
                break
        key = _loc_text(loc) or "(file)"
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{where}, line {line}, {key}: {msg}{more}") from exc


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
                spec = parse_file(path, model, where)
                name = _name_of(spec)
                if path.stem != name:
                    raise ConfigError(
                        f"{where}, line 1: the file must be named after what it maps "
                        f"({name}.yaml), so a site file of the same name replaces it"
                    )
                store[name] = spec
                out.origin[f"{kind}/{name}"] = where
        _attach(out)
        site = root / "site.yaml"
        if site.is_file():
            out.site = parse_file(site, SiteConfig, f"{prefix}site.yaml")
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
