"""Provenance: which mapping file and line made each element of a Bundle (the workbench's
"made by"), recorded only when asked, and without changing what is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError, EngineError
from engine.hl7v2.codec import parse_message, split_messages
from engine.mappings import Mappings, default_specs_dir, load_mappings
from engine.mappings.inbound import InboundMapper
from engine.mappings.provenance import ElementSource, RuleOrigin
from tests.conftest import FIXTURES

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "hl7v2"


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def _line(origin: RuleOrigin, root: Path) -> str:
    """The text of the line an origin names, in the file under ``root`` it names."""
    rel = origin.file.removeprefix("(built-in) ").split("/", 1)
    path = root / rel[0] / rel[1] if len(rel) == 2 else root / rel[0]
    return path.read_text().splitlines()[origin.line - 1]


def _source(sources: list[ElementSource], path: str) -> ElementSource:
    found = [s for s in sources if s.path == path]
    assert found, f"no element {path}: {[s.path for s in sources][:40]}"
    return found[0]


def test_a_name_is_traced_to_the_pid_rule_and_the_xpn_component(mappings: Mappings) -> None:
    message = parse_message((FIXTURES / "hl7" / "adt_a01.hl7").read_bytes())
    bundle, sources = mappings.to_fhir_traced(message)
    family = _source(sources, "entry[0].resource.name[0].family")
    assert family.value == bundle["entry"][0]["resource"]["name"][0]["family"]
    outer, inner = family.origins
    assert outer.file == "(built-in) segments/PID.yaml" and "PID-5 → name[]" in outer.rule
    assert "field: 5" in _line(outer, default_specs_dir())
    assert inner.file == "(built-in) datatypes/XPN.yaml"
    assert "{component: 1, fhir: family}" in _line(inner, default_specs_dir())
    birth = _source(sources, "entry[0].resource.birthDate")
    assert len(birth.origins) == 1 and "field: 7" in _line(birth.origins[0], default_specs_dir())


def test_what_the_engine_makes_has_no_rule(mappings: Mappings) -> None:
    message = parse_message((FIXTURES / "hl7" / "adt_a01.hl7").read_bytes())
    _bundle, sources = mappings.to_fhir_traced(message)
    for path in ("entry[0].fullUrl", "entry[0].request.url", "entry[0].resource.resourceType"):
        assert _source(sources, path).origins == ()


def test_message_map_lines_explain_references_and_codes_by_trigger(mappings: Mappings) -> None:
    message = parse_message((FIXTURES / "hl7" / "siu_s26.hl7").read_bytes())
    bundle, sources = mappings.to_fhir_traced(message)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    encounter = types.index("Encounter")
    status = _source(sources, f"entry[{encounter}].resource.status")
    (origin,) = status.origins
    assert origin.file == "(built-in) messages/SIU.yaml"
    assert "trigger_values" in _line(origin, default_specs_dir())
    subject = _source(sources, f"entry[{encounter}].resource.subject.reference")
    assert subject.origins[0].file == "(built-in) messages/SIU.yaml"
    assert "refs" in subject.origins[0].rule


def test_a_site_file_is_named_with_its_own_lines(tmp_path: Path) -> None:
    """The workbench shows the site's mappings: an override is named with its own line."""
    text = (default_specs_dir() / "segments" / "PID.yaml").read_text()
    (tmp_path / "segments").mkdir()
    # three comment lines more before the rules: every rule moves down by three
    site_text = text.replace("rules:\n", "rules:\n  # one\n  # two\n  # three\n", 1)
    (tmp_path / "segments" / "PID.yaml").write_text(site_text)
    site = load_mappings(tmp_path)
    message = parse_message((FIXTURES / "hl7" / "adt_a01.hl7").read_bytes())
    _bundle, sources = site.to_fhir_traced(message)
    outer = _source(sources, "entry[0].resource.name[0].family").origins[0]
    assert outer.file == f"{tmp_path}/segments/PID.yaml"
    assert "field: 5" in site_text.splitlines()[outer.line - 1]
    builtin = load_mappings().to_fhir_traced(message)[1]
    assert outer.line == _source(builtin, "entry[0].resource.name[0].family").origins[0].line + 3


def _messages() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted([*CORPUS.rglob("*"), *(FIXTURES / "hl7").glob("*.hl7")]):
        if path.is_file():
            out += [(f"{path.name}:{line}", raw) for line, raw in split_messages(path.read_bytes())]
    return [(name, raw) for name, raw in out if isinstance(raw, bytes)]


def test_tracing_changes_nothing_of_what_is_made(mappings: Mappings) -> None:
    """Every message of the fixtures and the outside corpus: the traced Bundle is the same,
    and every element a resource's rules made names a file and line."""
    compared = 0
    for name, raw in _messages():
        try:
            message = parse_message(raw)
            plain = mappings.to_fhir(message)
        except EngineError:
            continue
        traced, sources = mappings.to_fhir_traced(message)
        assert traced == plain, name
        made = [s for s in sources if ".resource." in s.path and s.origins]
        assert made, name
        assert all(o.line >= 1 and o.file for s in made for o in s.origins), name
        compared += 1
    assert compared > 100


def test_an_untraced_mapper_generates_the_same_code_as_before(mappings: Mappings) -> None:
    plain = InboundMapper(mappings.files)
    traced = InboundMapper(mappings.files, trace=True)
    assert "trace" not in plain.source("PID") and "trace" not in plain.source("XPN")
    assert "run.trace.note" in traced.source("XPN") and "NPUT" in traced.source("PV1")
    message = parse_message((FIXTURES / "hl7" / "adt_a01.hl7").read_bytes())
    with pytest.raises(ConfigError, match="trace"):
        plain.to_bundle_traced(message)
