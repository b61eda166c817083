"""The x12 suite: reading synthetic 271 eligibility responses (005010X279A1).

Each 271 is one interchange with one subscriber (2000C) and 16 EB segments: active coverage,
deductibles (calendar year, remaining, family, out of network), out of pocket, copays for several
service types, co-insurance, visit limits with a quantity used, a non-covered service and a
primary care provider in an LS/LE loop: about 45 segments, like a real payer's answer to EQ*30.
Names, member IDs, amounts and control numbers differ per message. Every input is built before
any clock starts; each contestant is then checked, untimed, on what it produced.

Contestants: (a) the envelope alone (ISA/GS/ST, counts, control numbers), (b) ``read_271``:
envelope, HL loops and typed results, the goal (>= 5,000/s), (c) ``x271_to_fhir`` (a Bundle of
dicts, not validated), (d) the same with fhir.resources validation, on a sample.
"""

from __future__ import annotations

import random
from typing import Any

from bench.harness import Options, Timing, environment, format_table, measure
from engine.mappings.fhir_validate import validate_bundle
from engine.x12.envelope import parse_interchange
from engine.x12.fhir import x271_to_fhir
from engine.x12.x271 import read_271

__all__ = ["make_271", "run"]

FULL_COUNT = 20_000
QUICK_COUNT = 2_000
VALIDATE_SAMPLE = 200
GOAL = 5_000

_LAST = ["LINDQVIST", "OCONNOR-NUNEZ", "ABERNATHY", "ODUYA", "PRZYBYLSKI", "HALVORSEN", "NAKAMURA"]
_FIRST = ["ASTRID", "ZOE", "CLARA", "FOLASADE", "TOMASZ", "INGRID", "KENJI", "MARISOL"]


def make_271(n: int, rng: random.Random) -> str:
    """A synthetic 271 (one subscriber, 16 EBs); ``n`` makes the control numbers unique."""
    ded = rng.choice([500, 1000, 1500, 2500])
    oop = rng.choice([3000, 5000, 7500])
    ctl = n % 999_999_999 + 1
    body = [
        f"BHT*0022*11*TRC-{n:08d}*20250314*093100",
        "HL*1**20*1",
        "NM1*PR*2*CEDAR VALLEY HEALTH PLAN*****PI*CVHP1",
        "PER*IC*PROVIDER SERVICES*TE*5555550100",
        "HL*2*1*21*1",
        "NM1*1P*2*GREENFIELD FAMILY PRACTICE*****XX*1234567893",
        "HL*3*2*22*0",
        f"TRN*2*TRC-{n:08d}*1999999999",
        f"TRN*1*CV-{n:08d}*9CEDARVALL",
        f"NM1*IL*1*{rng.choice(_LAST)}*{rng.choice(_FIRST)}****MI*W{rng.randrange(10**9):09d}",
        "N3*12 ELM STREET*APT 4",
        "N4*SPRINGFIELD*IL*627010000",
        f"DMG*D8*{rng.randrange(1940, 2020)}0{rng.randrange(1, 10)}1{rng.randrange(0, 10)}*F",
        "INS*Y*18*001*25",
        "DTP*346*D8*20250101",
        "DTP*347*D8*20251231",
        "EB*1*IND*30*PR*CEDAR VALLEY PPO GOLD",
        f"EB*C*IND*30***23*{ded}*****Y",
        f"EB*C*IND*30***29*{rng.randrange(ded * 100) / 100:.2f}*****Y",
        f"EB*C*FAM*30***23*{ded * 2}*****Y",
        f"EB*C*IND*30***23*{ded * 2}*****N",
        f"EB*G*IND*30***23*{oop}*****Y",
        f"EB*G*IND*30***29*{rng.randrange(oop)}*****Y",
        f"EB*B*IND*98^UC***27*{rng.choice([20, 25, 30])}*****Y",
        "MSG*COPAY WAIVED FOR PREVENTIVE VISITS",
        "EB*B*IND*86***27*150*****Y",
        "EB*A*IND*30****.2****Y",
        "EB*A*IND*30****.4****N",
        "EB*A*IND*AL****.125****Y",
        "EB*F*IND*AD***22***VS*20*Y*Y",
        f"EB*F*IND*AD***22***99*{rng.randrange(20)}**Y",
        "EB*I*IND*BE",
        "EB*L",
        "LS*2120",
        "NM1*P3*1*HALVORSEN*INGRID****XX*1245319599",
        "LE*2120",
    ]
    isa = (
        "ISA*00*          *00*          *ZZ*CEDARVALLEY    *ZZ*GREENFIELDFP   *250314*0931*^*"
        f"00501*{ctl:09d}*0*P*:"
    )
    segments = [
        isa,
        f"GS*HB*CEDARVALLEY*GREENFIELDFP*20250314*0931*{ctl}*X*005010X279A1",
        "ST*271*0001*005010X279A1",
        *body,
        f"SE*{len(body) + 2}*0001",
        f"GE*1*{ctl}",
        f"IEA*1*{ctl:09d}",
    ]
    return "~\n".join(segments) + "~\n"


def _envelope(text: str) -> Any:
    return parse_interchange(text)


def _read(text: str) -> Any:
    return read_271(text)


def _fhir(text: str) -> Any:
    return x271_to_fhir(text)


def _fhir_validated(text: str) -> Any:
    bundle = x271_to_fhir(text)
    validate_bundle(bundle)
    return bundle


def _check(inputs: list[str]) -> None:
    """Untimed: every contestant read every input fully and the same way."""
    for text in inputs:
        (response,) = read_271(text)
        (result,) = response.results
        assert len(result.benefits) == 16 and result.active is True, "271 misread"
        assert response.results[0].matches(response.reference), "trace not echoed"
        assert len(parse_interchange(text).iea.elements) == 3, "envelope misread"
        bundle = x271_to_fhir(text)
        items = bundle["entry"][-1]["resource"]["insurance"][0]["item"]
        assert len(items) >= 15, "FHIR lost items"


def run(options: Options) -> dict[str, Any]:
    count = QUICK_COUNT if options.quick else FULL_COUNT
    rng = random.Random(271)
    inputs = [make_271(n, rng) for n in range(count)]
    segments = inputs[0].count("~")
    print(
        f"x12: {count:,} synthetic 271s, {segments} segments and 16 EBs each; "
        f"best of {options.repeat}"
    )
    sample = inputs[:VALIDATE_SAMPLE]
    timings: list[Timing] = [
        measure("a", "parse_interchange (envelope only)", _envelope, inputs, options.repeat),
        measure("b", "read_271 (envelope, loops, typed results)", _read, inputs, options.repeat),
        measure("c", "x271_to_fhir (Bundle, not validated)", _fhir, inputs, options.repeat),
        measure(
            "d",
            f"x271_to_fhir + validate_bundle (sample of {VALIDATE_SAMPLE})",
            _fhir_validated,
            sample,
            options.repeat,
        ),
    ]
    _check(inputs[:500])
    print()
    print(format_table(timings, [("b", "vs read_271")]))
    rates = {t.key: t.best_rate for t in timings}
    goals = {f"read_271 >= {GOAL:,}/s": rates["b"] >= GOAL}
    print("\ngoals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    return {
        "suite": "x12",
        "quick": options.quick,
        "environment": environment(["fhir.resources", "hl7-engine"]),
        "data": {"messages": count, "segments_per_message": segments, "eb_per_message": 16},
        "timings": [t.as_dict() for t in timings],
        "goals": goals,
    }
