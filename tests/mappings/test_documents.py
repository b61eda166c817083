"""Documents to FHIR: the document type table (LOINC, TXA-2, athena classes; a site layers over it)
and the DocumentReference mapping file (checked at load; its output valid FHIR R4)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.documents.model import DocumentInfo
from engine.errors import ConfigError, ConversionError
from engine.hl7v2.codec import parse_message
from engine.mappings import Mappings, load_mappings
from engine.mappings.document_types import document_types
from engine.mappings.documents import fhir_body, inline_attachment, sha1_base64
from engine.mappings.fhir_validate import validate_resource

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
SHA1 = base64.b64encode(hashlib.sha1(b"%PDF-1.4 test").digest()).decode()


def info(**changes: object) -> DocumentInfo:
    base: dict[str, object] = {
        "document_id": 12,
        "sha256": hashlib.sha256(b"%PDF-1.4 test").hexdigest(),
        "size": 13,
        "media_type": "application/pdf",
        "patient_mrn": "MRN1",
        "document_type": "insurance-card",
        "document_date": "2026-03-01",
        "sender": "FRONTDESK",
        "channel": "folder",
        "patient_authority": "OAKCLINIC",
        "title": "Insurance card front",
    }
    base.update(changes)
    return DocumentInfo(**base)  # type: ignore[arg-type]


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


# -- the type table --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "loinc", "athena"),
    [
        ("insurance-card", "64290-0", ("ADMIN", "ADMIN_INSURANCECARD")),
        ("consent", "59284-0", ("ADMIN", "ADMIN_CONSENT")),
        ("referral", "57133-1", ("ADMIN", "ADMIN_REFERRAL")),
        ("lab-report", "11502-2", ("LABRESULT", None)),
        ("clinical-note", "11506-3", ("CLINICALDOCUMENT", None)),
        ("imaging-report", "18748-4", ("IMAGINGRESULT", None)),
    ],
)
def test_builtin_table(
    mappings: Mappings, code: str, loinc: str, athena: tuple[str, str | None]
) -> None:
    t = document_types(mappings).get(code)
    assert t.loinc_code == loinc
    assert (t.athena_class, t.athena_subclass) == athena


def test_txa2_back_to_our_type(mappings: Mappings) -> None:
    table = document_types(mappings)
    assert table.from_txa2("di") == "imaging-report"
    assert table.from_txa2("PR") == "clinical-note"
    assert table.from_txa2("ZZ") == table.default == "other"


def test_unknown_type_is_a_clear_error(mappings: Mappings) -> None:
    with pytest.raises(ConversionError, match="'x-ray' is not in the document type table"):
        document_types(mappings).get("x-ray")


def test_site_table_layers_type_by_type(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tables/document_types.yaml",
        "types:\n"
        "  consent:\n"
        "    display: Signed consent\n"
        "    loinc: {code: 59284-0, display: Patient Consent}\n"
        "    txa2: CONSENT\n"
        "    athena: {class: ADMIN, subclass: ADMIN_HIPAA}\n"
        "  wound-photo:\n"
        "    display: Wound photo\n"
        "    txa2: WP\n"
        "    athena: {class: CLINICALDOCUMENT}\n",
    )
    table = document_types(load_mappings(tmp_path))
    assert table.get("consent").athena_subclass == "ADMIN_HIPAA"
    assert table.from_txa2("CONSENT") == "consent"
    assert table.get("wound-photo").loinc_code is None
    assert table.get("insurance-card").loinc_code == "64290-0"  # untouched
    assert table.get("consent").origin.startswith(str(tmp_path))
    site = load_mappings(tmp_path)
    doc = fhir_body(info(document_type="wound-photo"), site, now=NOW)["DocumentReference"]
    assert doc["type"] == {"text": "Wound photo"}  # the site's type, mapped


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        (
            "types:\n  consent:\n    display: C\n    txa2: CS\n    athena: {class: ADMINS}\n",
            5,
            "types.consent.athena",
            "not one of",
        ),
        (
            "types:\n  consent:\n    display: C\n    txa2: CS\n"
            '    loinc: {code: "59284", display: X}\n    athena: {class: ADMIN}\n',
            5,
            "types.consent.loinc.code",
            "not a LOINC code",
        ),
        ("default: nothing\n", 1, "default", "no type 'nothing'"),
        (
            "types:\n  scan:\n    display: S\n    txa2: DI\n    athena: {class: ADMIN}\n",
            4,
            "types.scan.txa2",
            "already the code of type 'imaging-report'",
        ),
    ],
)
def test_table_errors_name_file_line_key(
    tmp_path: Path, text: str, line: int, key: str, words: str
) -> None:
    write(tmp_path, "tables/document_types.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_mappings(tmp_path)
    message = str(err.value)
    assert f"tables/document_types.yaml, line {line}, {key}:" in message
    assert words in message


# -- the DocumentReference ---------------------------------------------------------------------


def test_document_reference_is_valid_r4_with_loinc_type(mappings: Mappings) -> None:
    body = fhir_body(
        info(appointment="APT7", encounter="V9", author="Dr Test"), mappings, now=NOW, sha1=SHA1
    )
    doc = body["DocumentReference"]
    validate_resource(doc)
    assert doc["status"] == "current"
    assert doc["type"]["coding"] == [
        {"system": "http://loinc.org", "code": "64290-0", "display": "Health insurance card"}
    ]
    assert doc["date"] == "2026-03-04T05:06:07Z"
    attachment = doc["content"][0]["attachment"]
    assert attachment == {
        "contentType": "application/pdf",
        "size": 13,
        "hash": SHA1,
        "title": "Insurance card front",
        "creation": "2026-03-01",
    }
    assert doc["context"]["related"] == [{"type": "Appointment", "identifier": {"value": "APT7"}}]
    assert doc["context"]["encounter"][0]["identifier"] == {"value": "V9"}
    assert doc["author"] == [{"display": "Dr Test"}]
    assert body["Binary"] == {"resourceType": "Binary", "contentType": "application/pdf"}
    assert "data" not in attachment


@pytest.mark.parametrize("relation", ["replaces", "appends"])
def test_an_addendum_or_replacement_relates_to_its_parent(
    mappings: Mappings, relation: str
) -> None:
    """An MDM T06 (addendum) or T04/T08/T10 (replacement) keeps TXA-13: relatesTo names the
    earlier document by the number its sender gave it, the identifier that document's own
    DocumentReference carries as masterIdentifier."""
    parent = fhir_body(info(sender="EHR", unique_number="DOC-9"), mappings, now=NOW)
    child = fhir_body(
        info(sender="EHR", unique_number="DOC-10", parent_number="DOC-9", relation=relation),
        mappings,
        now=NOW,
    )
    doc = child["DocumentReference"]
    validate_resource(doc)
    assert doc["relatesTo"] == [
        {
            "code": relation,
            "target": {
                "type": "DocumentReference",
                "identifier": parent["DocumentReference"]["masterIdentifier"] | {"value": "DOC-9"},
            },
        }
    ]
    assert parent["DocumentReference"]["masterIdentifier"]["value"] == "DOC-9"
    assert "relatesTo" not in parent["DocumentReference"]


def test_subject_system_is_the_one_pid3_gets(mappings: Mappings) -> None:
    """The patient is named as the HL7v2 mapping names the same MRN from PID-3."""
    adt = parse_message(
        b"MSH|^~\\&|FRONTDESK|OAKCLINIC|ENGINE|HUB|20260101||ADT^A04|C1|P|2.5.1\r"
        b"EVN|A04|20260101\rPID|1||MRN1^^^OAKCLINIC^MR||Doe^Jan\rPV1|1|O\r"
    )
    bundle = mappings.to_fhir(adt)
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    ident = patient["identifier"][0]
    doc = fhir_body(info(), mappings, now=NOW)["DocumentReference"]
    assert doc["subject"] == {
        "type": "Patient",
        "identifier": {"system": ident["system"], "value": ident["value"]},
    }


def test_type_without_loinc_is_text_only(mappings: Mappings) -> None:
    doc = fhir_body(info(document_type="other"), mappings, now=NOW)["DocumentReference"]
    assert doc["type"] == {"text": "Other document"}
    validate_resource(doc)


def test_sha1_hash_and_inline_data(mappings: Mappings) -> None:
    data = b"%PDF-1.4 test"
    digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert sha1_base64([data[:5], data[5:]]) == digest
    doc = fhir_body(info(), mappings, now=NOW)["DocumentReference"]
    inline = inline_attachment(doc, data)
    validate_resource(inline)
    assert inline["content"][0]["attachment"]["data"] == base64.b64encode(data).decode()
    assert inline["content"][0]["attachment"]["hash"] == digest
    assert "data" not in doc["content"][0]["attachment"]  # the original is not changed


def test_site_mapping_file_replaces_builtin(tmp_path: Path) -> None:
    write(
        tmp_path,
        "documents/document_reference.yaml",
        "resource: DocumentReference\nrules:\n"
        "  - {fhir: status, value: current}\n"
        "  - {fhir: subject, from: $patient}\n"
        "  - {fhir: description, from: file_name}\n"
        '  - {fhir: "content[]", from: $attachment, wrap: {attachment: $value}}\n',
    )
    doc = fhir_body(info(file_name="card.pdf"), load_mappings(tmp_path), now=NOW)
    assert doc["DocumentReference"]["description"] == "card.pdf"
    assert "type" not in doc["DocumentReference"]


@pytest.mark.parametrize(
    ("rule", "key", "words"),
    [
        ("{fhir: subjekt, from: $patient}", "rules[1].fhir", "did you mean 'subject'"),
        ("{fhir: subject, from: title}", "rules[1].from", "a document field (text) cannot"),
        ("{fhir: description, from: $patient}", "rules[1].from", "makes a Reference"),
        ("{fhir: description, from: nonsense}", "rules[1]", "neither a field of the document"),
        (
            '{fhir: "content[]", from: $attachment, wrap: {attachmnt: $value}}',
            "rules[1].wrap.attachmnt",
            "no element 'attachmnt'",
        ),
    ],
)
def test_mapping_file_checked_at_load(tmp_path: Path, rule: str, key: str, words: str) -> None:
    write(
        tmp_path,
        "documents/document_reference.yaml",
        f"resource: DocumentReference\nrules:\n  - {{fhir: status, value: current}}\n  - {rule}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_mappings(tmp_path)
    message = str(err.value)
    assert "documents/document_reference.yaml, line 4, " + key in message
    assert words in message
