"""The X12 envelope and the 270, 271, TA1 and 999 readers, and 270/271 → FHIR.

One input is an interchange as a payer or clearinghouse might send it: a seed mutated at the
element level (the fixed-width ISA kept, so the input reaches the transaction sets: an element
given an odd value, a segment dropped, repeated, moved or taken from another seed) or at the byte
level (which mostly tests the ISA and envelope), or bytes from scratch. It is parsed strictly and
leniently, written back, acknowledged (the 999/TA1 the engine would send), and read by every
reader: 271, 270, TA1/999, and the FHIR conversion ``engine convert`` runs.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from engine.errors import EngineError
from engine.x12.ack import read_acks
from engine.x12.acknowledge import acknowledge
from engine.x12.envelope import Interchange, parse_interchanges
from engine.x12.fhir import interchange_to_fhir
from engine.x12.x270 import read_270
from engine.x12.x271 import read_271
from fuzz.mutate import MAX_INPUT, Program, mutate_bytes
from fuzz.runner import Target
from fuzz.seeds import x12_seeds

__all__ = ["TARGET", "run"]

TOKENS: tuple[bytes, ...] = (
    b"*",
    b"~",
    b":",
    b"^",
    b">",
    b"|",
    b"\n",
    b"\r\n",
    b"\x1d",
    b"\x00",
    b"\xff",
    b"~IEA*1*000000001~",
    b"~SE*5*0001~",
    b"~GE*1*1~",
    b"~ST*271*0001*005010X279A1~",
    b"~HL*9*1*22*0~",
    b"~EB*1**30~",
    b"~AAA*N**72*C~",
    b"~TA1*000000001*250101*1200*R*001~",
    b"~IK5*R*5~",
    b"~AK9*R*1*1*0~",
)

_ODD = (
    "",
    "0",
    "-1",
    "1.5",
    "99999999999999999999",
    "1E99",
    "20251399",
    "20250230",
    "2025",
    "20250101-20241231",
    "ABC",
    "X" * 300,
    "*",
    ":",
    "^",
    "\x00",
    "É",
    "271",
    "270",
    "999",
    "005010X279A1",
    "004010X092A1",
    "22",
    "21",
    "20",
    "1",
    "2",
    "D8",
    "RD8",
)

_NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def mutate_x12(seed: bytes, prog: Program, others: tuple[bytes, ...]) -> bytes:
    """Element-level edits after the ISA, with the separators the ISA names."""
    text = seed.decode("latin-1")
    if not text.startswith("ISA") or len(text) < 106:
        return mutate_bytes(seed, prog, TOKENS, others)
    sep, comp, term = text[3], text[104], text[105]
    head, body = text[:106], text[106:]
    segs = body.split(term)
    for _ in range(1 + prog.below(6)):
        if prog.done or not segs:
            break
        op = prog.below(6)
        k = prog.below(len(segs))
        if op in (0, 1):  # an element given an odd value (or a component of one)
            elems = segs[k].split(sep)
            e = prog.below(len(elems) + 2)
            while len(elems) <= e:
                elems.append("")
            value = prog.pick(_ODD)
            if prog.byte() & 1:
                value = comp.join((value, prog.pick(_ODD)))
            elems[e] = value
            segs[k] = sep.join(elems)
        elif op == 2:
            del segs[k]
        elif op == 3:
            segs[k:k] = [segs[k]] * (1 + prog.below(50))
        elif op == 4:
            j = prog.below(len(segs))
            segs[k], segs[j] = segs[j], segs[k]
        else:
            other = prog.pick(others).decode("latin-1")
            if other.startswith("ISA") and len(other) > 106:
                osegs = other[106:].split(other[105])
                segs.insert(k, prog.pick(osegs).replace(other[3], sep))
    return (head + term.join(segs)).encode("latin-1")[:MAX_INPUT]


def strategy() -> st.SearchStrategy[bytes]:
    seeds = x12_seeds()
    elements = st.builds(
        lambda s, p: mutate_x12(s, Program(p), seeds),
        st.sampled_from(seeds),
        st.binary(min_size=1, max_size=32),
    )
    raw = st.builds(
        lambda s, p: mutate_bytes(s, Program(p), TOKENS, seeds),
        st.sampled_from(seeds),
        st.binary(min_size=1, max_size=32),
    )
    return st.one_of(elements, elements, elements, raw, st.binary(max_size=300))


def _read(interchange: Interchange) -> None:
    interchange.to_x12()
    interchange.to_x12(line_breaks=True)
    for seg in interchange.segments():
        seg.where()
    acknowledge(interchange, sender_id="ENGINE", receiver_id="PAYER", control_number=7, now=_NOW)


def run(data: bytes) -> None:
    """One input through the envelope parser (strict and lenient) and every reader."""
    for strict in (True, False):
        try:
            interchanges = parse_interchanges(data, strict=strict)
        except EngineError:
            continue
        for interchange in interchanges:
            for step in (_read, read_271, read_270, read_acks):
                try:
                    step(interchange)
                except EngineError:
                    pass
    interchange_to_fhir(data)


TARGET = Target(
    "x12",
    strategy,
    run,
    about="parse_interchanges strict and lenient, to_x12, acknowledge (999/TA1), read_271, "
    "read_270, read_acks, interchange_to_fhir",
)
