"""X12 270/271 conformance on public 005010X279A1 samples (``python -m scripts.x12_conformance``).

Reads ../shared/conformance/x12 (``oopfactory/``: the implementation guide's examples, with a
BOM, CRLF line breaks, a 0x1D terminator, and ``*Validation*`` files that are deliberately faulty;
``linuxforhealth/``). For every file:

* a 270 must parse and read (:func:`engine.x12.x270.read_270`);
* a 271 must parse, read (:func:`engine.x12.x271.read_271`) and convert to a FHIR Bundle whose
  every resource passes :func:`engine.mappings.fhir_validate.validate_bundle`;
* a file the strict reader refuses is reported with the reason (segment, element), then read again
  with ``strict=False`` to show what is still understood: "handled".

Prints one line per file and the totals; exits 1 when a file fails in a way that is not a named
refusal (an unexpected exception, invalid FHIR, or a good sample unreadable even leniently). Not
part of ``make test``: the samples live outside the repository.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from engine.mappings.fhir_validate import validate_bundle
from engine.x12.envelope import Interchange, parse_interchange
from engine.x12.errors import X12Error
from engine.x12.fhir import x271_to_fhir
from engine.x12.x270 import read_270
from engine.x12.x271 import read_271

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "x12"
SKIP = {"LICENSE", "SOURCE_COMMIT", "License.html"}


def _summary_271(interchange: Interchange) -> tuple[str, list[str]]:
    responses = read_271(interchange)
    bundle = x271_to_fhir(interchange)
    validate_bundle(bundle)
    outcomes = [
        e["resource"]["outcome"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "CoverageEligibilityResponse"
    ]
    people = [r for resp in responses for r in resp.results]
    benefits = sum(len(r.benefits) for r in people)
    aaa = {f"{e.loop}:{e.reason.code}" for resp in responses for e in resp.errors}
    aaa |= {f"{e.loop}:{e.reason.code}" for r in people for e in r.errors}
    extra = f", AAA {' '.join(sorted(aaa))}" if aaa else ""
    summary = (
        f"271 read and converted: {len(people)} patient(s), {benefits} EB, "
        f"{len(bundle['entry'])} FHIR resources valid, outcome {'/'.join(outcomes)}{extra}"
    )
    return summary, [w for resp in responses for w in resp.warnings]


def _summary_270(interchange: Interchange) -> tuple[str, list[str]]:
    inquiries = read_270(interchange)  # adds HL warnings to the interchange's
    who = ", ".join(
        f"{'dependent' if i.dependent else 'subscriber'} trace {i.trace_number}" for i in inquiries
    )
    return f"270 read: {len(inquiries)} inquiry ({who})", list(interchange.warnings)


def _read(data: bytes, strict: bool) -> str:
    interchange = parse_interchange(data, strict=strict)
    kind = next(interchange.transactions()).id
    summary, warnings = (_summary_271 if kind == "271" else _summary_270)(interchange)
    return summary + "".join(f"\n        warning: {w}" for w in warnings)


def check(path: Path) -> tuple[str, str]:
    """(status, text) for one sample; status is parsed, refused+handled, refused or FAILED."""
    data = path.read_bytes()
    try:
        return "parsed", _read(data, strict=True)
    except X12Error as exc:
        reason = str(exc)
    except Exception as exc:  # report it and go on with the next sample
        return "FAILED", f"{type(exc).__name__}: {exc}"
    try:
        lenient = _read(data, strict=False)
        return "refused+handled", f"refused: {reason}\n      lenient: {lenient}"
    except X12Error as exc:
        return "refused", f"refused: {reason} (lenient: {exc})"
    except Exception as exc:
        return "FAILED", f"refused: {reason}; lenient failed: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else DEFAULT_DIR
    if not root.is_dir():
        print(f"no samples at {root}")
        return 1
    counts: Counter[tuple[str, str]] = Counter()
    failed = 0
    for path in sorted(p for p in root.glob("*/*") if p.is_file() and p.name not in SKIP):
        group = "faulty" if "Validation" in path.name else "good"
        status, text = check(path)
        counts[(group, status)] += 1
        if status == "FAILED" or (group == "good" and status == "refused"):
            failed += 1
        print(f"[{group}] {path.parent.name}/{path.name}: {status}\n      {text}")
    print("\ntotals:")
    for (group, status), n in sorted(counts.items()):
        print(f"  {group:6} {status:16} {n}")
    print(f"  failures: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
