"""Compare our SIU → Appointment mapping with Microsoft FHIR-Converter's expected output.

For every ``hl7v2/SIU-*.hl7`` sample of a FHIR-Converter checkout that has an
``expected/<name>-expected.json``, map the sample with the built-in mapping files and check that we
agree with them on:

* Appointment.status;
* Appointment.start, as an instant (they write it at another offset);
* the patient: our MRN (the PID-3 identifier typed MR) is one of their MR identifiers, and family
  name, birth date and gender are the same.

It also says, without counting it as a disagreement, when our bundle is not valid FHIR R4B.

Usage: ``python -m scripts.siu_peer_check [FHIR-CONVERTER-DIR]`` (default
``../shared/conformance/fhir-converter`` next to the repository). Prints one line per sample and a
count; exits 1 when a sample disagrees, 2 when there are no samples.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConversionError
from engine.hl7v2 import parse_message
from engine.mappings import Mappings, load_mappings
from engine.mappings.fhir_validate import validate_bundle
from engine.mappings.golden import same_instant

__all__ = ["check_sample", "invalid_reason", "main"]

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "fhir-converter"


def _first(bundle: dict[str, Any], resource_type: str) -> dict[str, Any] | None:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == resource_type:
            return dict(resource)
    return None


def _typed(identifiers: list[dict[str, Any]], code: str) -> list[str]:
    return [
        str(i.get("value"))
        for i in identifiers
        if any(c.get("code") == code for c in i.get("type", {}).get("coding", []))
    ]


def _family(patient: dict[str, Any]) -> str | None:
    names = patient.get("name") or [{}]
    family = names[0].get("family")
    return str(family) if family is not None else None


def check_sample(mappings: Mappings, hl7_path: Path, expected_path: Path) -> list[str]:
    """The disagreements between our bundle for ``hl7_path`` and theirs (empty: we agree)."""
    ours = mappings.to_fhir(parse_message(hl7_path.read_bytes()))
    theirs = json.loads(expected_path.read_text(encoding="utf-8"))
    problems: list[str] = []

    our_appt, their_appt = _first(ours, "Appointment"), _first(theirs, "Appointment")
    if our_appt is None or their_appt is None:
        return [f"Appointment: ours {our_appt is not None}, theirs {their_appt is not None}"]
    if our_appt.get("status") != their_appt.get("status"):
        problems.append(f"status: ours {our_appt.get('status')}, theirs {their_appt.get('status')}")
    our_start, their_start = our_appt.get("start"), their_appt.get("start")
    if not (
        isinstance(our_start, str)
        and isinstance(their_start, str)
        and same_instant(our_start, their_start)
    ):
        problems.append(f"start: ours {our_start}, theirs {their_start}")

    our_pat, their_pat = _first(ours, "Patient"), _first(theirs, "Patient")
    if our_pat is None or their_pat is None:
        return [*problems, f"Patient: ours {our_pat is not None}, theirs {their_pat is not None}"]
    our_mrn = _typed(our_pat.get("identifier", []), "MR")[:1]
    their_mrns = _typed(their_pat.get("identifier", []), "MR")
    if not our_mrn or our_mrn[0] not in their_mrns:
        problems.append(f"MRN: ours {our_mrn}, theirs {their_mrns}")
    for label, ours_v, theirs_v in (
        ("family name", _family(our_pat), _family(their_pat)),
        ("birthDate", our_pat.get("birthDate"), their_pat.get("birthDate")),
        ("gender", our_pat.get("gender"), their_pat.get("gender")),
    ):
        if ours_v != theirs_v:
            problems.append(f"{label}: ours {ours_v!r}, theirs {theirs_v!r}")
    return problems


def invalid_reason(mappings: Mappings, hl7_path: Path) -> str | None:
    """Why our bundle for ``hl7_path`` is not valid FHIR (None: it is)."""
    try:
        validate_bundle(mappings.to_fhir(parse_message(hl7_path.read_bytes())))
    except ConversionError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else DEFAULT_DIR
    samples = sorted((root / "hl7v2").glob("SIU-*.hl7"))
    mappings = load_mappings()
    checked = agreed = 0
    for sample in samples:
        expected = root / "expected" / f"{sample.stem}-expected.json"
        if not expected.is_file():
            print(f"{sample.name}: no expected output, skipped")
            continue
        checked += 1
        problems = check_sample(mappings, sample, expected)
        if problems:
            line = f"{sample.name}: DISAGREE: " + "; ".join(problems)
        else:
            agreed += 1
            line = f"{sample.name}: agree"
        invalid = invalid_reason(mappings, sample)
        print(line + (f" (our bundle is not valid FHIR: {invalid})" if invalid else ""))
    print(f"SIU peer check: {agreed}/{checked} samples agree with FHIR-Converter")
    if checked == 0:
        return 2
    return 0 if agreed == checked else 1


if __name__ == "__main__":
    sys.exit(main())
