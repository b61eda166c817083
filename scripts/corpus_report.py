"""The outside corpus (tests/corpus/, other projects' test data) through the engine, by source.

``python -m scripts.corpus_report`` prints, per source, how many messages and files converted,
how many were refused (and why, grouped), and what broke a property the engine promises:

* HL7v2 → FHIR: every message converts to a valid R4 Bundle (fhir.resources R4B) or is refused
  with a reason (an EngineError naming the problem); a Bundle is never empty; a DFT's charges are
  all Claim items; a visit (PV1 with visit data) is an Encounter.
* X12 → FHIR: every 270/271 converts to valid R4 or is refused with a reason.
* FHIR → HL7v2: every Patient, Coverage, Appointment and Claim (alone or in a Bundle) converts to
  a message that passes ``engine validate`` (hl7apy, strict); a CoverageEligibilityRequest
  converts to a 270 or is refused naming what the 270 needs.

``tests/test_corpus.py`` holds ``make test`` to the same properties with these functions.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"

#: FT1-6 transaction types that are not charges (table 0017: credit, payment, adjustment, co-pay)
_NOT_CHARGES = frozenset({"CD", "PY", "AJ", "CO"})


@dataclass
class Outcome:
    """One message (HL7v2) or interchange (X12) of the corpus."""

    source: str
    file: str
    index: int
    #: converted, refused, or broken (a property the engine promises does not hold)
    status: str
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    message_type: str = ""


def _sources(kind: str) -> list[Path]:
    root = CORPUS / kind
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def hl7_outcomes() -> Iterator[Outcome]:
    """Every HL7v2 message of the corpus, converted and checked."""
    from engine.errors import EngineError
    from engine.hl7v2.codec import parse_message, split_messages
    from engine.mappings import load_mappings
    from engine.mappings.fhir_validate import validate_bundle

    mappings = load_mappings()
    for source in _sources("hl7v2"):
        for path in sorted(source.glob("*.hl7")):
            pieces = [raw for _line, raw in split_messages(path.read_bytes())]
            for index, raw in enumerate(pieces, 1):
                out = Outcome(source.name, path.name, index, "converted")
                try:
                    message = parse_message(raw)
                    out.message_type = str(message.type)
                    bundle = mappings.to_fhir(message, out.warnings)
                    validate_bundle(bundle)
                except EngineError as exc:
                    out.status, out.detail = "refused", str(exc)
                except Exception as exc:  # a crash is a broken promise, reported as such
                    out.status, out.detail = "broken", f"crash: {type(exc).__name__}: {exc}"
                else:
                    problem = _hl7_problem(message, bundle)
                    if problem:
                        out.status, out.detail = "broken", problem
                yield out


def _hl7_problem(message: Any, bundle: dict[str, Any]) -> str | None:
    resources = [e["resource"] for e in bundle.get("entry", [])]
    if not resources:
        return "empty Bundle"
    types = Counter(r["resourceType"] for r in resources)
    code = message.type.code
    if code == "DFT":
        charges = [s for s in message.all("FT1") if s.get(6) not in _NOT_CHARGES]
        items = sum(len(r.get("item", [])) for r in resources if r["resourceType"] == "Claim")
        if items != len(charges):
            return f"DFT with {len(charges)} charge(s) made {items} Claim item(s)"
    visit = any(
        pv1.get(2) not in ("", "N") or any(pv1.get(f) for f in (3, 7, 19, 44))
        for pv1 in message.all("PV1")
    )
    if code in ("ADT", "DFT") and visit and not types.get("Encounter"):
        return "a PV1 with visit data made no Encounter"
    return None


def x12_outcomes() -> Iterator[Outcome]:
    """Every X12 file of the corpus, converted to FHIR and checked."""
    from engine.errors import EngineError
    from engine.mappings.fhir_validate import validate_bundle
    from engine.x12.fhir import interchange_to_fhir

    for source in _sources("x12"):
        for path in sorted(p for p in source.iterdir() if p.is_file()):
            out = Outcome(source.name, path.name, 1, "converted")
            try:
                bundle, out.warnings = interchange_to_fhir(path.read_bytes())
                validate_bundle(bundle)
            except EngineError as exc:
                out.status, out.detail = "refused", str(exc)
            except Exception as exc:
                out.status, out.detail = "broken", f"crash: {type(exc).__name__}: {exc}"
            else:
                if not bundle.get("entry"):
                    out.status, out.detail = "broken", "empty Bundle"
            yield out


_V2_KINDS = frozenset({"Patient", "Coverage", "Appointment", "Claim"})


def fhir_outcomes() -> Iterator[Outcome]:
    """Every FHIR example of the corpus, to HL7v2 (validated) or to a 270."""
    import orjson

    from engine.errors import EngineError
    from engine.hl7v2.validate import validate
    from engine.mappings import load_mappings
    from engine.x12.fhir import request_to_inquiry

    mappings = load_mappings()
    for source in _sources("fhir"):
        for path in sorted(source.glob("*.json")):
            doc = orjson.loads(path.read_bytes())
            entries = doc.get("entry") or [] if doc.get("resourceType") == "Bundle" else []
            kinds = {str(e.get("resource", {}).get("resourceType")) for e in entries} | {
                str(doc.get("resourceType"))
            }
            out = Outcome(source.name, path.name, 1, "converted")
            try:
                if "CoverageEligibilityRequest" in kinds:
                    out.message_type = "CoverageEligibilityRequest → 270"
                    request_to_inquiry(doc, originator_id="1234567890")
                elif kinds & _V2_KINDS:
                    out.message_type = "→ HL7v2"
                    message = mappings.to_hl7(
                        doc, control_id="C1", timestamp="20250101000000", warnings=out.warnings
                    )
                    errors = [i for i in validate(message) if i.severity == "E"]
                    if errors:
                        out.status, out.detail = "broken", f"invalid HL7v2: {errors[0]}"
                else:
                    continue  # a type that makes no message (Organization, Practitioner ...)
            except EngineError as exc:
                out.status, out.detail = "refused", str(exc)
            except Exception as exc:
                out.status, out.detail = "broken", f"crash: {type(exc).__name__}: {exc}"
            yield out


def _reason(detail: str) -> str:
    """A refusal's reason without the parts that differ per message."""
    text = detail.split(": ", 1)[-1] if detail.startswith(("segment", "PID", "MSH")) else detail
    return text[:90]


def report(outcomes: list[Outcome], title: str) -> list[str]:
    lines = [
        f"{title}",
        "",
        "| source | total | converted | refused | broken |",
        "|---|---|---|---|---|",
    ]
    by_source: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_source.setdefault(o.source, Counter())[o.status] += 1
    for source, c in sorted(by_source.items()):
        lines.append(
            f"| {source} | {sum(c.values())} | {c['converted']} | {c['refused']} | {c['broken']} |"
        )
    total = Counter(o.status for o in outcomes)
    lines.append(
        f"| **all** | {len(outcomes)} | {total['converted']} | {total['refused']} | "
        f"{total['broken']} |"
    )
    reasons = Counter(_reason(o.detail) for o in outcomes if o.status == "refused")
    if reasons:
        lines += ["", "Refused, by reason:", ""]
        lines += [f"- {n} × {r}" for r, n in reasons.most_common()]
    broken = [o for o in outcomes if o.status == "broken"]
    if broken:
        lines += ["", "Broken:", ""]
        lines += [f"- {o.source}/{o.file} #{o.index}: {o.detail}" for o in broken]
    warned = sum(1 for o in outcomes if o.warnings)
    lines += ["", f"{warned} converted with warnings (data no mapping took, listed per message)"]
    return lines


def main() -> int:
    hl7 = list(hl7_outcomes())
    x12 = list(x12_outcomes())
    fhir = list(fhir_outcomes())
    lines = report(hl7, "HL7v2 → FHIR R4") + [""] + report(x12, "X12 → FHIR R4")
    lines += [""] + report(fhir, "FHIR R4 → HL7v2 (validated) and CoverageEligibilityRequest → 270")
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if any(o.status == "broken" for o in hl7 + x12 + fhir) else 0


if __name__ == "__main__":
    raise SystemExit(main())
