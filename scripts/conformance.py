"""``make conformance``: agree with Microsoft FHIR-Converter's public samples on meaning.

For every FHIR-Converter HL7v2 sample of a message type we support (../shared/conformance/
fhir-converter: ``hl7v2/*.hl7`` with ``expected/*-expected.json``) it converts the sample with the
built-in mappings and compares with their expected output:

* ADT: the patient's MRN (our PID-3 identifier typed MR is one of theirs), family name, birth
  date and gender;
* SIU: the above, Appointment.status and Appointment.start as an instant
  (scripts/siu_peer_check.py);
* DFT^P03: the patient, and every charge code of theirs among our Claim item codes
  (scripts/dft_peer_check.py).

Samples of message types we do not map (ADT^A02, A06, A09 ...) are counted as not applicable.
Prints one line per sample and the agreement counts; exits 1 on any disagreement. Reads
../shared when it is present; it is not part of ``make test``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.hl7v2 import parse_message
from engine.mappings import Mappings, load_mappings
from scripts import dft_peer_check, siu_peer_check

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "fhir-converter"


def _patient(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(
        (e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"), {}
    )


def _values(patient: dict[str, Any]) -> list[str]:
    return [str(i.get("value")) for i in patient.get("identifier", [])]


def check_adt(mappings: Mappings, hl7_path: Path, expected_path: Path) -> list[str]:
    """Disagreements on the patient between our bundle and theirs.

    The MRN compared is the identifier our bundle keys the patient on (the PID-3 repetition typed
    MR, else the first); it must be one of their identifiers. A merge (A40) is compared on who
    replaces whom: FHIR-Converter writes a Linkage (source, alternate), we write Patient.link.
    """
    bundle = mappings.to_fhir(parse_message(hl7_path.read_bytes()))
    theirs_bundle = json.loads(expected_path.read_text())
    ours = _patient(bundle)
    key = bundle["entry"][0]["request"]["url"].rpartition("?identifier=")[2].rpartition("|")[2]
    linkage = next(
        (
            e["resource"]
            for e in theirs_bundle["entry"]
            if e["resource"]["resourceType"] == "Linkage"
        ),
        None,
    )
    if linkage is not None:
        # pairs (surviving, merged) in order: theirs from the Linkage items (source, historical),
        # ours from each surviving Patient's link of type replaces
        values = [i["resource"].get("identifier", {}).get("value") for i in linkage["item"]]
        theirs_pairs = [(values[k], values[k + 1]) for k in range(0, len(values) - 1, 2)]
        ours_pairs = [
            (
                e["request"]["url"].rpartition("|")[2],
                e["resource"]["link"][0]["other"]["identifier"]["value"],
            )
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Patient"
            and e["resource"].get("link", [{}])[0].get("type") == "replaces"
        ]
        if ours_pairs != theirs_pairs:
            return [f"merges (surviving, merged): ours {ours_pairs}, theirs {theirs_pairs}"]
        return []
    theirs = _patient(theirs_bundle)
    problems = []
    if key not in _values(theirs):
        problems.append(f"MRN: ours {key!r}, theirs {_values(theirs)}")
    for field in ("birthDate", "gender"):
        if ours.get(field) != theirs.get(field):
            problems.append(f"{field}: ours {ours.get(field)!r}, theirs {theirs.get(field)!r}")
    ours_family = (ours.get("name") or [{}])[0].get("family")
    theirs_family = (theirs.get("name") or [{}])[0].get("family")
    if ours_family != theirs_family:
        problems.append(f"family: ours {ours_family!r}, theirs {theirs_family!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else DEFAULT_DIR
    if not (root / "hl7v2").is_dir():
        print(f"no FHIR-Converter samples at {root}: nothing to compare")
        return 2
    mappings = load_mappings()
    agreed = checked = skipped = 0
    print("== ADT (patient demographics and MRN)")
    for hl7_path in sorted((root / "hl7v2").glob("ADT*.hl7")):
        expected = root / "expected" / f"{hl7_path.stem}-expected.json"
        if not expected.is_file():
            continue
        try:
            message = parse_message(hl7_path.read_bytes())
            mappings.inbound.message_map(message)
        except EngineError as exc:
            skipped += 1
            print(f"  n/a   {hl7_path.name}: {exc.message.split(' (')[0]}")
            continue
        checked += 1
        problems = check_adt(mappings, hl7_path, expected)
        if problems:
            print(f"  DIFF  {hl7_path.name}: " + "; ".join(problems))
        else:
            agreed += 1
            print(f"  agree {hl7_path.name}")
    print(f"ADT: {agreed} of {checked} supported samples agree ({skipped} not applicable)")
    print("== SIU (status, start instant, patient)")
    siu = siu_peer_check.main([str(root)])
    print("== DFT^P03 (charge codes, patient)")
    dft = dft_peer_check.main([str(root)])
    ok = agreed == checked and siu == 0 and dft == 0
    print("conformance: " + ("all supported samples agree" if ok else "DISAGREEMENTS above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
