"""MDM^T02 out (valid v2.5.1 by `engine validate`, the bytes filled in at sending time) and MDM in
(the document an MDM carries: ED base64 or a reference pointer, TXA-2 back to our type)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.documents.model import DocumentInfo
from engine.errors import ConversionError
from engine.hl7v2.codec import parse_message
from engine.hl7v2.validate import validate
from engine.mappings import Mappings, load_mappings
from engine.mappings.document_types import DocumentTypes, document_types
from engine.mappings.mdm import fill_mdm, mdm_t02, parse_mdm

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


def info(**changes: object) -> DocumentInfo:
    base: dict[str, object] = {
        "document_id": 31,
        "sha256": hashlib.sha256(PDF).hexdigest(),
        "size": len(PDF),
        "media_type": "application/pdf",
        "patient_mrn": "MRN1",
        "document_type": "lab-report",
        "document_date": "2026-03-01",
        "sender": "FAX",
        "channel": "folder",
        "patient_authority": "OAKCLINIC",
        "author": "Testdoctor",
        "file_name": "lab.pdf",
    }
    base.update(changes)
    return DocumentInfo(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


@pytest.fixture(scope="module")
def types(mappings: Mappings) -> DocumentTypes:
    return document_types(mappings)


def t02(mappings: Mappings, **changes: object) -> str:
    return mdm_t02(
        info(**changes), document_types(mappings), mappings.files.site, control_id="E31", now=NOW
    )


def test_mdm_t02_passes_engine_validate(mappings: Mappings, tmp_path: Path) -> None:
    full = fill_mdm(t02(mappings, appointment="APT1", encounter="V1"), PDF)
    errors = [i for i in validate(full) if i.severity == "E"]
    assert errors == []
    path = tmp_path / "mdm.hl7"
    path.write_bytes(full)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("relation", "trigger"), [("replaces", "T10"), ("appends", "T06")])
def test_a_related_document_goes_as_t10_or_t06_with_its_parent_in_txa13(
    mappings: Mappings, relation: str, trigger: str
) -> None:
    er7 = t02(mappings, unique_number="DOC-10", parent_number="DOC-9", relation=relation)
    full = fill_mdm(er7, PDF)
    assert [i for i in validate(full) if i.severity == "E"] == []
    msg = parse_message(er7)
    assert (msg.type.trigger, msg.get("EVN-1")) == (trigger, trigger)
    assert msg.get("MSH-9.3") == "MDM_T02"
    assert (msg.get("TXA-13.1"), msg.get("TXA-13.2")) == ("DOC-9", "FAX")
    # read back in, the relation and the parent are what went out
    back = parse_mdm(full, document_types(mappings))
    assert (back.relation, back.parent_number) == (relation, "DOC-9")


def test_a_relation_without_a_parent_number_goes_as_t02(mappings: Mappings) -> None:
    msg = parse_message(t02(mappings, relation="replaces"))
    assert msg.type.trigger == "T02" and msg.get("TXA-13") == ""


def test_envelope_er7_has_no_data_and_fill_encodes_once(mappings: Mappings) -> None:
    er7 = t02(mappings)
    msg = parse_message(er7)
    assert msg.type.code == "MDM" and msg.type.trigger == "T02"
    assert msg.get("TXA-2") == "LR"  # the type table's TXA-2 for lab-report
    assert msg.get("OBX-3.1") == "11502-2"
    assert msg.get("OBX-5.2") == "application" and msg.get("OBX-5.3") == "pdf"
    assert msg.get("OBX-5.5") == ""
    assert msg.get("PID-3.1") == "MRN1" and msg.get("PID-3.4") == "OAKCLINIC"
    full = fill_mdm(er7, PDF)
    assert parse_message(full).get("OBX-5.5") == base64.b64encode(PDF).decode()
    # nothing else changed: the data, and the component separator before it
    assert len(full) == len(er7.encode()) + 1 + len(base64.b64encode(PDF))


def test_round_trip_same_bytes(mappings: Mappings, types: DocumentTypes) -> None:
    doc = parse_mdm(fill_mdm(t02(mappings), PDF), types)
    assert doc.data == PDF
    assert hashlib.sha256(doc.data).hexdigest() == info().sha256
    assert (doc.document_type, doc.patient_mrn, doc.patient_authority) == (
        "lab-report",
        "MRN1",
        "OAKCLINIC",
    )
    assert doc.document_date == "2026-03-01"
    assert doc.unique_number == "DOC31"
    assert doc.declared_type == "application/pdf"
    assert doc.file_name == "lab.pdf"


def test_unique_number_stays_in_its_senders_namespace(mappings: Mappings) -> None:
    assert parse_message(t02(mappings)).get("TXA-12") == "DOC31"
    assert parse_message(t02(mappings)).get("TXA-12.2") == "ENGINE"
    msg = parse_message(t02(mappings, unique_number="U-1", sender="EHR"))
    assert (msg.get("TXA-12.1"), msg.get("TXA-12.2")) == ("U-1", "EHR")


def test_image_types(mappings: Mappings) -> None:
    msg = parse_message(t02(mappings, media_type="image/tiff"))
    assert (msg.get("OBX-5.2"), msg.get("OBX-5.3")) == ("image", "tiff")
    with pytest.raises(ConversionError, match="text/plain"):
        t02(mappings, media_type="text/plain")


INBOUND = (
    "MSH|^~\\&|EHR|CLINIC|ENGINE|HUB|20260301120000||MDM^{trigger}^MDM_T02|M1|P|2.5.1\r"
    "EVN|{trigger}|20260301120000\r"
    "PID|1||{pid3}||Testpatient^Ann\r"
    "PV1|1|O\r"
    "TXA|1|{txa2}|AP|20260228||||||||U-77^EHR|{parent}||||DO\r"
    "OBX|1|{vtype}|11506-3^Progress note^LN||{value}||||||F\r"
)


def inbound(**kw: str) -> bytes:
    values = {"trigger": "T02", "txa2": "PR", "parent": "", "vtype": "ED"}
    values["pid3"] = "MRN7^^^CLINIC^MR"
    values["value"] = "^application^pdf^Base64^" + base64.b64encode(PDF).decode()
    values.update(kw)
    return INBOUND.format(**values).encode()


def test_mdm_in_ed(types: DocumentTypes) -> None:
    doc = parse_mdm(inbound(), types)
    assert doc.data == PDF
    assert doc.document_type == "clinical-note"
    assert doc.unique_number == "U-77" and doc.sender == "EHR"
    assert doc.document_date == "2026-02-28"
    assert doc.relation is None


def test_mdm_in_unknown_txa2_gets_the_default(types: DocumentTypes) -> None:
    assert parse_mdm(inbound(txa2="XYZ"), types).document_type == "other"


def test_mdm_in_addendum_names_its_parent(types: DocumentTypes) -> None:
    doc = parse_mdm(inbound(trigger="T06", parent="U-70^EHR"), types)
    assert doc.relation == "appends" and doc.parent_number == "U-70"
    assert parse_mdm(inbound(trigger="T04"), types).relation == "replaces"


def test_mdm_in_reference_pointer(types: DocumentTypes) -> None:
    doc = parse_mdm(
        inbound(vtype="RP", value="https://ehr.example/docs/77^EHR^application^pdf"), types
    )
    assert doc.data is None
    assert doc.pointer == "https://ehr.example/docs/77"
    assert doc.declared_type == "application/pdf"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("^application^pdf^Base64^not*base64!", "outside the base64 alphabet"),
        ("^application^pdf^Base64^QUJDR", "bad length or padding"),
        ("^application^pdf^Base64^", "(empty)"),
        ("^application^pdf^Hex^414243", "is not Base64"),
    ],
)
def test_mdm_in_bad_obx5_names_it(types: DocumentTypes, value: str, words: str) -> None:
    with pytest.raises(ConversionError) as err:
        parse_mdm(inbound(value=value), types)
    assert "OBX-5" in str(err.value) and words in str(err.value)


def test_mdm_in_without_document(types: DocumentTypes) -> None:
    with pytest.raises(ConversionError, match="no OBX with the document"):
        parse_mdm(inbound(vtype="TX", value="just text"), types)


def test_mdm_in_an_mrn_or_authority_past_64_characters_is_refused_naming_pid3(
    types: DocumentTypes,
) -> None:
    """The documents table keeps 64 characters of each: a longer one would be cut, and the
    document filed under another patient's identifier. The error names the field, never the
    value (an MRN names a patient)."""
    long_mrn = "SMITHJOHN19700101-" + "7" * 47  # 65 characters
    with pytest.raises(ConversionError) as err:
        parse_mdm(inbound(pid3=f"{long_mrn}^^^CLINIC^MR"), types)
    assert err.value.where == "PID-3" and "64" in str(err.value)
    assert long_mrn not in str(err.value) and "SMITH" not in str(err.value)
    with pytest.raises(ConversionError) as err:
        parse_mdm(inbound(pid3="MRN7^^^" + "A" * 65 + "^MR"), types)
    assert err.value.where == "PID-3.4" and "64" in str(err.value)
    assert parse_mdm(inbound(pid3="7" * 64 + "^^^" + "A" * 64), types).patient_mrn == "7" * 64
