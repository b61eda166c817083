"""The mapping and route loaders (engine/mappings, engine/routes, engine/yamlfile.py) on mutated
YAML.

**routes**: an input is a route file, a built-in or documented one mutated (at the text level, or
as a document: values, keys and items edited and written back). It is written over the built-in
``example.yaml`` in a site directory and read by ``load_routes`` as ``engine serve`` reads it
(every destination's and pull source's keys checked by its adapter's model); what loads is
compiled into a ``Router`` and matched against the fixture messages.

**mappings**: an input is ``<path>\\n<YAML>``: one built-in mapping file (``segments/PID.yaml``)
mutated the same ways, as a site file of that name. Loading every built-in file for each input
would take about 75 ms, so the built-ins are loaded once, and each input goes through the same
steps ``load_mappings`` takes for a site file: the file read by the real loader of its kind
(``load_files`` given only the site file to read; ``load_outbound``, ``load_document_types``
and ``load_document_maps`` as they are, the built-ins and the site file), put over the
built-ins as ``load_files`` does, every reference checked (``check_files``) and the maps it
holds compiled (a segment or datatype map's functions, the message maps, and for an outbound
file the outbound mapper ``to_hl7`` builds). Every 500th input runs the whole
``load_mappings`` on the site directory instead, end to end.
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from engine.adapters.registry import load_routes
from engine.hl7v2.codec import Message, parse_message
from engine.mappings import Mappings, load_mappings
from engine.mappings.check import check_files
from engine.mappings.compiler import Compiler
from engine.mappings.document_types import load_document_types
from engine.mappings.documents import load_document_maps
from engine.mappings.inbound import InboundMapper
from engine.mappings.loader import MappingFiles, _attach, load_files
from engine.mappings.outbound import OutboundMapper
from engine.mappings.outbound_spec import load_outbound
from engine.routes.router import Router
from fuzz.mutate import Program, mutate_bytes, mutate_tree
from fuzz.runner import Target
from fuzz.seeds import REPO, mapping_seeds, route_seeds

__all__ = ["MAPPINGS", "ROUTES", "run_mappings", "run_routes"]

TOKENS: tuple[bytes, ...] = (
    b"\n",
    b"\n  ",
    b": ",
    b"- ",
    b"? ",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!python/object:os.system ",
    b"!custom ",
    b"!!binary ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"'",
    b'"',
    b"#",
    b"|\n",
    b">-\n",
    b"\t",
    b"\x00",
    b"\xff",
    b"~",
    b"null",
    b"1e999",
    b".nan",
    b"0x1F",
    b"2026-01-01",
    b"---\n",
    b"...\n",
    b"%YAML 1.1\n",
    b"\xef\xbb\xbf",
)

_MESSAGES = ("adt_a01.hl7", "siu_s12.hl7", "dft_p03.hl7")


@lru_cache(maxsize=1)
def _workdir() -> Path:
    """A private scratch directory for the site files (in memory where /dev/shm is: a file is
    written per input), removed when the process exits."""
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix="engine-fuzz-", dir=shm if shm.is_dir() else None))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _site(name: str, rel: str, data: bytes) -> Path:
    """The site directory ``name`` holding one file, ``rel``, and nothing else."""
    site = _workdir() / name
    for old in site.rglob("*.yaml"):
        old.unlink()
    (site / rel).parent.mkdir(parents=True, exist_ok=True)
    (site / rel).write_bytes(data)
    return site


def _mutated(seed: bytes, prog: bytes, tree: bool, others: tuple[bytes, ...]) -> bytes:
    p = Program(prog)
    return mutate_tree(seed, p) if tree else mutate_bytes(seed, p, TOKENS, others)


# -- routes ------------------------------------------------------------------------------------


def routes_strategy() -> st.SearchStrategy[bytes]:
    seeds = route_seeds()
    return st.builds(
        _mutated,
        st.sampled_from(seeds),
        st.binary(min_size=1, max_size=40),
        st.booleans(),
        st.just(seeds),
    )


@lru_cache(maxsize=1)
def _messages() -> tuple[Message, ...]:
    return tuple(parse_message((REPO / "fixtures" / "hl7" / n).read_bytes()) for n in _MESSAGES)


def run_routes(data: bytes) -> None:
    """One route file read as the engine reads its route directory."""
    site = _site("routes", "example.yaml", data)
    routes = load_routes(site)
    router = Router(routes)
    for msg in _messages():
        router.match(message=msg)
    router.match(resource_type="Patient")


# -- mappings ----------------------------------------------------------------------------------


def mappings_strategy() -> st.SearchStrategy[bytes]:
    seeds = mapping_seeds()
    texts = tuple(text for _, text in seeds)
    return st.builds(
        lambda pick, prog, tree: pick[0].encode() + b"\n" + _mutated(pick[1], prog, tree, texts),
        st.sampled_from(seeds),
        st.binary(min_size=1, max_size=40),
        st.booleans() | st.just(True),
    )


@lru_cache(maxsize=1)
def _base() -> Mappings:
    """The built-in mapping files, loaded and compiled once."""
    return load_mappings(None)


def _merged(base: MappingFiles, site: MappingFiles) -> MappingFiles:
    """``base`` with the site's files over it, as :func:`load_files` puts a site directory over
    the built-ins (the dicts copied; the built-in models are shared, never changed)."""
    out = copy.copy(base)
    for kind in ("tables", "datatypes", "segments", "messages"):
        merged = dict(getattr(base, kind))
        merged.update(getattr(site, kind))
        setattr(out, kind, merged)
    out.origin = {**base.origin, **site.origin}
    out.sources = {**base.sources, **site.sources}
    out.kept = {**base.kept, **site.kept}
    for key in site.origin:
        if key not in site.kept:
            out.kept.pop(key, None)
    out.refused = [*base.refused, *site.refused]
    if "site" in site.origin:
        out.site = site.site
    _attach(out)
    return out


_COUNT = [0]


def run_mappings(data: bytes) -> None:
    """One mutated mapping file as a site file over the built-ins."""
    rel_b, _, text = data.partition(b"\n")
    rel = rel_b.decode("utf-8", "replace")
    kind, _, name = rel.rpartition("/")
    if ".." in rel or rel.startswith("/") or not rel.endswith(".yaml"):
        return
    site = _site("mappings", rel, text)
    _COUNT[0] += 1
    if _COUNT[0] % 500 == 0:
        load_mappings(site)
        return
    base = _base().files
    empty = _workdir() / "empty"
    empty.mkdir(exist_ok=True)
    if kind == "outbound":
        files = copy.copy(base)
        files.sources = dict(base.sources)
        files.outbound = load_outbound(site, sources=files.sources)
        check_files(files)
        OutboundMapper(files)
        return
    if kind == "documents" or rel == "tables/document_types.yaml":
        files = copy.copy(base)
        files.sources = dict(base.sources)
        files.document_types = load_document_types(site, sources=files.sources)
        files.documents = load_document_maps(site, sources=files.sources)
        check_files(files)
        return
    files = _merged(base, load_files(site, defaults=empty))
    check_files(files)
    stem = name.removesuffix(".yaml")
    maker: Any = _base().inbound._resource_maker
    if kind == "segments" and stem in files.segments:
        Compiler(files, maker).segment(stem)
    elif kind == "datatypes" and stem in files.datatypes:
        Compiler(files, maker).datatype(stem, rel)
    elif kind == "messages" or rel == "site.yaml":
        InboundMapper(files)


def setup_mappings() -> None:
    _base()


def setup_routes() -> None:
    _messages()
    load_routes(None)


ROUTES = Target(
    "routes",
    routes_strategy,
    run_routes,
    setup=setup_routes,
    about="load_routes over a site example.yaml (adapters' checks), Router, match",
)
MAPPINGS = Target(
    "mappings",
    mappings_strategy,
    run_mappings,
    setup=setup_mappings,
    about="a site mapping file: its kind's loader, over the built-ins, check_files, compiled "
    "(every 500th: load_mappings end to end); the outbound mapper built for outbound files",
)
