"""FHIR paths in mapping files are checked against the R4 model at load, naming file, line, key.

Each test copies a built-in file into a site directory with one mistake, as an IT admin editing
a copy would make it, and expects the load to stop with the site file, the line of the mistake,
the key, the bad path and the closest valid name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.mappings import default_specs_dir, load_mappings
from engine.mappings.fhir_model import elements, is_resource_type, model_of
from engine.mappings.fhir_paths import PathError, root, walk


def site_copy(site: Path, rel: str, old: str, new: str) -> tuple[str, int]:
    """Copy built-in ``rel`` into ``site`` with ``old`` replaced by ``new`` (once); the file's
    name as errors write it, and the line of the change."""
    text = (default_specs_dir() / rel).read_text()
    assert text.count(old) == 1, f"{old!r} is not unique in {rel}"
    changed = text.replace(old, new)
    path = site / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(changed)
    line = changed[: changed.index(new)].count("\n") + 1
    return f"{site}/{rel}", line


def load_error(site: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_mappings(site)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_every_builtin_mapping_file_passes() -> None:
    m = load_mappings()
    assert m.files.segments and m.files.datatypes and m.files.outbound


def test_a_misspelt_inbound_element_names_file_line_key_and_the_right_name(tmp_path: Path) -> None:
    where, line = site_copy(tmp_path, "segments/PID.yaml", "fhir: birthDate,", "fhir: birthdate,")
    text = load_error(tmp_path)
    assert text.startswith(f"{where}, line {line}, rules[")
    assert ".fhir: 'birthdate': FHIR R4 Patient has no element 'birthdate'" in text
    assert "(did you mean 'birthDate'?)" in text


def test_a_misspelt_element_deeper_in_a_datatype_map(tmp_path: Path) -> None:
    where, line = site_copy(
        tmp_path,
        "datatypes/XPN.yaml",
        "fhir: period.start,",
        "fhir: period.strat,",
    )
    text = load_error(tmp_path)
    assert text.startswith(f"{where}, line {line}, rules[")
    assert "'period.strat': FHIR R4 Period has no element 'strat' (did you mean 'start'?)" in text


def test_a_choice_element_must_name_its_type(tmp_path: Path) -> None:
    site_copy(tmp_path, "segments/PID.yaml", "fhir: deceasedDateTime,", "fhir: deceased,")
    text = load_error(tmp_path)
    assert "Patient.deceased[x] is a choice: name the type" in text
    assert "deceasedBoolean, deceasedDateTime" in text


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        # a list written as one value would be an object where FHIR has an array
        ('fhir: "name[]", type: XPN', "fhir: name, type: XPN", "Patient.name is a list"),
        ("fhir: birthDate,", 'fhir: "birthDate[]",', "Patient.birthDate is not a list"),
    ],
)
def test_lists_are_appended_to_and_single_elements_are_not(
    tmp_path: Path, old: str, new: str, says: str
) -> None:
    site_copy(tmp_path, "segments/PID.yaml", old, new)
    assert says in load_error(tmp_path)


def test_a_misspelt_key_in_a_wrap_is_named_at_its_line(tmp_path: Path) -> None:
    where, line = site_copy(
        tmp_path,
        "segments/PID.yaml",
        "wrap: {language: $value, preferred: true}",
        "wrap: {langauge: $value, preferred: true}",
    )
    text = load_error(tmp_path)
    assert text.startswith(f"{where}, line {line}, rules[")
    assert ".wrap.langauge: FHIR R4 PatientCommunication has no element 'langauge'" in text
    assert "(did you mean 'language'?)" in text


def test_a_datatype_map_must_make_the_elements_type(tmp_path: Path) -> None:
    site_copy(
        tmp_path, "segments/PID.yaml", 'fhir: "name[]", type: XPN', 'fhir: "name[]", type: XAD'
    )
    text = load_error(tmp_path)
    assert "'name[]' is a HumanName in FHIR R4, but the rule writes an Address" in text


def test_a_misspelt_plan_value_in_a_message_map(tmp_path: Path) -> None:
    where, line = site_copy(
        tmp_path, "messages/ADT.yaml", "values: {status: unknown}", "values: {staus: unknown}"
    )
    text = load_error(tmp_path)
    assert text.startswith(f"{where}, line {line}, resources[")
    assert "'staus': FHIR R4 Observation has no element 'staus' (did you mean 'status'?)" in text


def test_a_misspelt_path_an_outbound_file_reads(tmp_path: Path) -> None:
    where, line = site_copy(
        tmp_path,
        "outbound/DFT.yaml",
        "fhir: [billablePeriod.start, created]",
        "fhir: [billablePeriod.start, creatd]",
    )
    text = load_error(tmp_path)
    assert text.startswith(f"{where}, line {line}, segments[")
    assert ".default_from.FT1-4.fhir[1]: 'creatd': FHIR R4 Claim has no element 'creatd'" in text
    assert "(did you mean 'created'?)" in text


def test_a_misspelt_selection_path_in_an_outbound_file(tmp_path: Path) -> None:
    where, line = site_copy(
        tmp_path,
        "outbound/DFT.yaml",
        "via: claim.insurance.coverage,",
        "via: claim.insurance.coverge,",
    )
    text = load_error(tmp_path)
    assert text.startswith(f"{where}, line {line}, select[3].via: 'insurance.coverge'")
    assert "FHIR R4 ClaimInsurance has no element 'coverge' (did you mean 'coverage'?)" in text


def test_an_unknown_transform_names_file_line_and_the_closest(tmp_path: Path) -> None:
    where, line = site_copy(tmp_path, "segments/PID.yaml", "transform: date}", "transform: datee}")
    text = load_error(tmp_path)
    assert text.startswith(f"{where}, line {line}, rules[")
    assert ".transform: no transform named 'datee' (did you mean 'date'?)" in text


def test_an_unknown_transform_on_an_outbound_only_rule_is_found_at_load(tmp_path: Path) -> None:
    # direction: out rules are compiled only for the first outbound message; the check reads all
    site = tmp_path / "segments/ZPD.yaml"
    site.parent.mkdir(parents=True)
    site.write_text(
        "segment: ZPD\nresource: Patient\nrules:\n"
        "  - {field: 2, fhir: birthDate, transform: dat, direction: out}\n"
    )
    text = load_error(tmp_path)
    assert text.startswith(f"{tmp_path}/segments/ZPD.yaml, line 4, rules[0].transform:")


def test_every_problem_is_counted(tmp_path: Path) -> None:
    site_copy(tmp_path, "datatypes/XPN.yaml", "fhir: period.start,", "fhir: period.strat,")
    site_copy(tmp_path, "segments/PID.yaml", "fhir: birthDate,", "fhir: birthdate,")
    assert load_error(tmp_path).endswith("(and 1 more problem)")


def test_the_model_knows_resources_datatypes_and_backbone_elements() -> None:
    assert is_resource_type("Patient") and is_resource_type("Bundle")
    assert not is_resource_type("HumanName") and not is_resource_type("DomainResource")
    patient = model_of("Patient")
    assert patient is not None
    known = elements(patient)
    assert known["contact"].fhir_type == "PatientContact" and known["contact"].many
    assert known["deceasedBoolean"].choice == "deceased" and "_gender" in known
    assert walk(root("Patient"), "contact.name.given[]", writes=False).fhir_type == "string"
    with pytest.raises(PathError, match="a primitive: it has no element 'x'"):
        walk(root("Patient"), "gender.x")


def test_a_rule_the_format_refuses_is_shown_with_the_count_of_every_other_problem(
    tmp_path: Path,
) -> None:
    # rules[2] is refused by the file's format ('[]' before the last step); the FHIR paths of the
    # other rules are still walked, and what they find is counted after it
    site = tmp_path / "segments/ZPD.yaml"
    site.parent.mkdir(parents=True)
    site.write_text(
        "segment: ZPD\nresource: Patient\nrules:\n"
        '  - {field: 2, fhir: "extension[]", wrap: {url: "http://x.test", valueStrin: $value}}\n'
        '  - {field: 3, fhir: "maritalStatus.codng[]"}\n'
        '  - {field: 4, fhir: "contact[].nam"}\n'
    )
    text = load_error(tmp_path)
    assert text.startswith(f"{site}, line 6, rules[2].fhir: 'contact[].nam': only the last step")
    assert text.endswith("(and 2 more problems)")


def test_every_refused_rule_and_every_bad_path_is_counted(tmp_path: Path) -> None:
    # two rules the format refuses (one error each) in one file, a bad path in it and in another
    site = tmp_path / "segments/ZPD.yaml"
    site.parent.mkdir(parents=True)
    site.write_text(
        "segment: ZPD\nresource: Patient\nrules:\n"
        '  - {field: 2, fhir: "contact[].nam"}\n'
        '  - {field: 3, fhir: "maritalStatus.codng[]"}\n'
        '  - {field: 4, fhir: "name[].given[]"}\n'
    )
    site_copy(tmp_path, "segments/PID.yaml", "fhir: birthDate,", "fhir: birthdate,")
    text = load_error(tmp_path)
    assert text.startswith(f"{site}, line 4, rules[0].fhir: 'contact[].nam'")
    assert text.endswith("(and 3 more problems)")
