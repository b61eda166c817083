"""Compare our DFT^P03 → Claim with Microsoft FHIR-Converter's DFT^P03 → ChargeItem samples.

FHIR-Converter makes one ChargeItem per FT1; we make one Claim with one item per FT1. The two must
agree on what was charged and on who the patient is, so for every ``DFT-P03-*.hl7`` sample and its
``expected/DFT-P03-*-expected.json`` this prints, per FT1, whether our Claim.item productOrService
has the ChargeItem's code (code and system), and whether our Patient has their MRN (the value of
the identifier typed MR), family name, given names and birthDate. Quantity and amount (their
priceOverride, our item.net) are shown alongside. Differences that do not change the meaning
(identifier systems, extra name parts), and our bundle failing R4B validation, are printed as notes.

Run: ``.venv/bin/python -m scripts.dft_peer_check [conformance dir]``; exit status 1 when a sample
disagrees. Not part of ``make test``: it reads /work/shared, outside the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConversionError
from engine.hl7v2 import parse_message
from engine.mappings import load_mappings
from engine.mappings.fhir_validate import validate_bundle

DEFAULT_DIR = Path("/work/shared/conformance/fhir-converter")


def _resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == rtype
    ]


def _codes(concept: dict[str, Any] | None) -> list[tuple[str | None, str]]:
    """(system, code) of every coding, in order."""
    return [(c.get("system"), c["code"]) for c in (concept or {}).get("coding", []) if "code" in c]


def _mrn(patient: dict[str, Any]) -> tuple[str | None, str | None]:
    for ident in patient.get("identifier", []):
        if any(c.get("code") == "MR" for c in ident.get("type", {}).get("coding", [])):
            return ident.get("value"), ident.get("system")
    return None, None


def _show(codes: list[tuple[str | None, str]]) -> str:
    return ", ".join(f"{code} ({system or 'no system'})" for system, code in codes)


def compare_items(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[str]:
    """Disagreements on the charge codes, FT1 by FT1 (both keep the FT1 order)."""
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"{len(ours)} claim items, {len(theirs)} ChargeItems")
    for n, (item, charge) in enumerate(zip(ours, theirs, strict=False), start=1):
        our_codes = _codes(item.get("productOrService"))
        their_codes = _codes(charge.get("code"))
        qty = (item.get("quantity", {}).get("value"), charge.get("quantity", {}).get("value"))
        money = (item.get("net"), charge.get("priceOverride"))
        agree = bool(set(our_codes) & set(their_codes))
        print(
            f"  FT1 #{n}: ours {_show(our_codes)} / theirs {_show(their_codes)}: "
            f"{'agree' if agree else 'DISAGREE'}; quantity {qty[0]} / {qty[1]}; "
            f"net {money[0]} / priceOverride {money[1]}"
        )
        if not agree:
            problems.append(
                f"FT1 #{n}: our code {_show(our_codes)}, their code {_show(their_codes)}"
            )
    return problems


def compare_patients(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Disagreements and notes on the patient's MRN, name and birth date."""
    problems: list[str] = []
    notes: list[str] = []
    (our_mrn, our_sys), (their_mrn, their_sys) = _mrn(ours), _mrn(theirs)
    if our_mrn != their_mrn:
        problems.append(f"MRN {our_mrn!r}, theirs {their_mrn!r}")
    elif our_sys != their_sys:
        notes.append(f"MRN {our_mrn}: system {our_sys} / theirs {their_sys}")
    our_name = (ours.get("name") or [{}])[0]
    their_name = (theirs.get("name") or [{}])[0]
    if our_name.get("family") != their_name.get("family"):
        problems.append(f"family {our_name.get('family')!r}, theirs {their_name.get('family')!r}")
    our_given, their_given = our_name.get("given", []), their_name.get("given", [])
    if their_given[: len(our_given)] != our_given or not our_given:
        problems.append(f"given {our_given}, theirs {their_given}")
    elif len(their_given) > len(our_given):
        notes.append(f"given {our_given} / theirs {their_given}")
    if ours.get("birthDate") != theirs.get("birthDate"):
        problems.append(f"birthDate {ours.get('birthDate')}, theirs {theirs.get('birthDate')}")
    print(
        f"  Patient: MRN {our_mrn} / {their_mrn}; name {our_name.get('family')} {our_given} / "
        f"{their_name.get('family')} {their_given}; birthDate {ours.get('birthDate')} / "
        f"{theirs.get('birthDate')}"
    )
    return problems, notes


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else DEFAULT_DIR
    mappings = load_mappings()
    samples = sorted((root / "hl7v2").glob("DFT-P03-*.hl7"))
    if not samples:
        print(f"no DFT-P03 samples under {root / 'hl7v2'}")
        return 2
    agreed = 0
    for sample in samples:
        expected = root / "expected" / f"{sample.stem}-expected.json"
        print(f"{sample.name}:")
        ours = mappings.to_fhir(parse_message(sample.read_bytes()))
        theirs = json.loads(expected.read_text(encoding="utf-8"))
        claims = _resources(ours, "Claim")
        items = claims[0].get("item", []) if claims else []
        problems = compare_items(items, _resources(theirs, "ChargeItem"))
        patient_problems, notes = compare_patients(
            _resources(ours, "Patient")[0], _resources(theirs, "Patient")[0]
        )
        problems += patient_problems
        try:
            validate_bundle(ours)
        except ConversionError as exc:
            notes.append(f"our bundle does not validate: {exc}")
        for note in notes:
            print(f"  note: {note}")
        if problems:
            print("  => DISAGREE: " + "; ".join(problems))
        else:
            agreed += 1
            print("  => agree")
    print(f"{agreed} of {len(samples)} samples agree")
    return 0 if agreed == len(samples) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
