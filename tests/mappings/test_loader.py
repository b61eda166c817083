"""Mapping files: errors name file, line and key; a site directory layers over the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.hl7v2.codec import parse_message
from engine.mappings import default_specs_dir, load_mappings
from tests.conftest import FIXTURES

ZPD_MESSAGE = (
    b"MSH|^~\\&|FRONTDESK|OAKCLINIC|ENGINE|HUB|20260101||ADT^A08|Z1|P|2.5.1\r"
    b"EVN|A08|20260101\rPID|1||MRN1^^^OAKCLINIC^MR||Doe^Jan\rPV1|1|O\rZPD|Corner Pharmacy|Y\r"
)


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_builtin_set_loads() -> None:
    m = load_mappings()
    assert {"ADT", "SIU", "DFT"} <= set(m.files.messages)


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        "segments/ZPD.yaml",
        "segment: ZPD\nresource: Patient\nrules:\n  - {field: 1, fhir: x\n",
    )
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    text = str(info.value)
    assert "segments/ZPD.yaml" in text and "line 4" in text and "not valid YAML" in text


def test_unknown_key_names_line_and_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        "segments/ZPD.yaml",
        "segment: ZPD\nresource: Patient\nrules:\n  - field: 1\n    fhir: x\n    tabel: yes-no\n",
    )
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    assert "segments/ZPD.yaml, line 6, rules[0].tabel" in str(info.value)


def test_unknown_table_is_named(tmp_path: Path) -> None:
    write(
        tmp_path,
        "segments/ZPD.yaml",
        "segment: ZPD\nresource: Patient\nadd_to: [ADT.patient]\n"
        "rules:\n  - {field: 2, fhir: active, table: no-such-table}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    assert "no-such-table" in str(info.value) and "ZPD.yaml" in str(info.value)


def test_bad_fhir_path_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path,
        "segments/ZPD.yaml",
        "segment: ZPD\nresource: Patient\nrules:\n  - {field: 1, fhir: 'a[].b'}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    assert "line 4" in str(info.value) and "only the last step may append" in str(info.value)


def test_file_must_be_named_after_its_map(tmp_path: Path) -> None:
    write(tmp_path, "segments/Other.yaml", "segment: ZPD\nresource: Patient\nrules: []\n")
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    assert "ZPD.yaml" in str(info.value)


def test_add_to_a_missing_plan_is_named(tmp_path: Path) -> None:
    write(
        tmp_path,
        "segments/ZPD.yaml",
        "segment: ZPD\nresource: Patient\nadd_to: [ADT.nobody]\nrules: []\n",
    )
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    assert "no resource 'nobody'" in str(info.value) and "patient" in str(info.value)


def test_missing_site_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_mappings(tmp_path / "nope")


def test_site_maps_a_z_segment_to_an_extension(tmp_path: Path) -> None:
    write(
        tmp_path,
        "segments/ZPD.yaml",
        """segment: ZPD
resource: Patient
add_to: [ADT.patient]
rules:
  - field: 1
    fhir: "extension[]"
    wrap: {url: "https://example.org/fhir/StructureDefinition/pharmacy", valueString: $value}
  - field: 2
    fhir: "extension[]"
    transform: yes_no
    wrap: {url: "https://example.org/fhir/StructureDefinition/portal", valueBoolean: $value}
""",
    )
    bundle = load_mappings(tmp_path).to_fhir(parse_message(ZPD_MESSAGE))
    patient = bundle["entry"][0]["resource"]
    assert patient["extension"] == [
        {
            "url": "https://example.org/fhir/StructureDefinition/pharmacy",
            "valueString": "Corner Pharmacy",
        },
        {"url": "https://example.org/fhir/StructureDefinition/portal", "valueBoolean": True},
    ]
    # without the site directory, ZPD is ignored
    plain = load_mappings().to_fhir(parse_message(ZPD_MESSAGE))
    assert "extension" not in plain["entry"][0]["resource"]


def test_site_changes_identifier_systems_mrn_and_time_zone(tmp_path: Path) -> None:
    write(
        tmp_path,
        "site.yaml",
        """timezone: America/Chicago
identifier_systems:
  OAKCLINIC: https://oak.example.org/mrn
  NPI: http://hl7.org/fhir/sid/us-npi
mrn_type: PI
""",
    )
    raw = (FIXTURES / "hl7" / "adt_a03.hl7").read_bytes().replace(b"-0500|", b"|")
    bundle = load_mappings(tmp_path).to_fhir(parse_message(raw))
    patient = bundle["entry"][0]
    assert patient["resource"]["identifier"][0]["system"] == "https://oak.example.org/mrn"
    enc = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
    )
    assert enc["period"]["start"] == "2026-03-10T09:10:00-05:00"  # Chicago, daylight time


def test_site_file_replaces_the_default_of_the_same_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tables/administrative-sex.yaml",
        "table: administrative-sex\nsystem: http://hl7.org/fhir/administrative-gender\n"
        "map: {F: female, M: male, X: other}\ndefault: unknown\n",
    )
    m = load_mappings(tmp_path)
    assert m.files.origin["tables/administrative-sex"].startswith(str(tmp_path))
    raw = (FIXTURES / "hl7" / "adt_a03.hl7").read_bytes().replace(b"|19840229|F", b"|19840229|Q")
    patient = m.to_fhir(parse_message(raw))["entry"][0]["resource"]
    assert patient["gender"] == "unknown"


@pytest.mark.parametrize(
    ("within", "problem"),
    [
        ('{payor: "payor[]", beneficiary: insurer}', "'insurer' is not in refs"),
        ('{beneficiary: "beneficiary.reference"}', "no dots"),
        ("{beneficiary: subscriber}", "must be a plain reference"),
    ],
)
def test_identity_within_names_plain_references_made_before(
    tmp_path: Path, within: str, problem: str
) -> None:
    """``identity_within`` (engine/mappings/entries.py) names references the plan has, plain
    ones whose target is made earlier: anything else is named at load, with its file."""
    default = (default_specs_dir() / "messages" / "ADT.yaml").read_text()
    text = default.replace(
        '    identity_within: {beneficiary: beneficiary, payor: "payor[]"}\n',
        f"    identity_within: {within}\n",
    )
    if "subscriber" in within:
        text = text.replace(
            "      subscriber: [subscriber, patient]\n",
            "      subscriber: {to: subscriber, all: true}\n",
        )
    assert text != default
    write(tmp_path, "messages/ADT.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    assert "messages/ADT.yaml" in str(info.value) and problem in str(info.value)


def test_identity_within_refused_when_its_target_comes_later(tmp_path: Path) -> None:
    default = (default_specs_dir() / "messages" / "ADT.yaml").read_text()
    payer_plan = (
        "  - name: payer\n    resource: Organization\n    segments: [IN1-payer]\n"
        "    each: IN1\n    identity: identifier\n"
    )
    assert payer_plan in default
    moved = default.replace(payer_plan, "").replace(
        "  # OBX, AL1 and DG1 of the ADT_A01/A05",
        payer_plan + "  # OBX, AL1 and DG1 of the ADT_A01/A05",
    )
    write(tmp_path, "messages/ADT.yaml", moved)
    with pytest.raises(ConfigError) as info:
        load_mappings(tmp_path)
    assert "payer must come before coverage" in str(info.value)
