"""The codec suite: our lazy ER7 codec against python-hl7 and hl7apy on synthetic ADT^A04 messages.

The file is split into messages (and encoded to bytes for contestant g) *before* any clock starts,
so every contestant is timed on parsing alone. Every contestant is then checked, untimed, on every
message it was timed on: it must yield the same MSH-10 (or, for the field-reading contestant, the
same MRN) as python-hl7 does, so the rates compare the same work.

hl7apy builds and groups a full tree (~45 messages/s), so it is timed on a sample: the first
``HL7APY_SAMPLE`` messages of the same file. Its rate is messages per second over that sample.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hl7
from hl7apy.parser import parse_message as hl7apy_parse

from bench import synth
from bench.harness import DATA_DIR, Options, Timing, environment, format_table, measure
from engine.hl7v2 import Message, parse_message, split_messages

__all__ = ["FIELDS", "run"]

FULL_COUNT = 20_000
QUICK_COUNT = 2_000
HL7APY_SAMPLE = 200
HL7APY_SAMPLE_QUICK = 50
SEGMENTS_PER_MESSAGE = 10

#: What a mapping typically reads from an ADT^A04 (contestant d).
FIELDS = (
    "PID-3[1].1",
    "PID-3[1].4.1",
    "PID-5.1",
    "PID-5.2",
    "PID-7",
    "PID-8",
    "PID-11.1",
    "PID-13.1",
    "PV1-2",
    "IN1[1]-36",
    "IN1[2]-36",
    "IN1[1]-4.1",
)


# -- contestants (one message in, something derived from it out) -------------------------------


def _python_hl7(text: str) -> Any:
    return hl7.parse(text)


def _hl7apy(text: str) -> Any:
    return hl7apy_parse(text)


def _read_fields(text: str) -> tuple[str, ...]:
    msg = parse_message(text)
    get = msg.get
    return tuple(get(p) for p in FIELDS)


def _round_trip(text: str) -> str:
    return parse_message(text).to_er7()


def _full_split(text: str) -> str:
    """Touch every field, repetition and component, then serialise: the worst case for laziness."""
    msg = parse_message(text)
    for seg in msg.segments:
        for n in range(1, len(seg.fields())):
            for rep in seg.repetitions(n):
                rep.components()
    return msg.to_er7()


# -- fingerprints for the untimed check --------------------------------------------------------


def _fp_python_hl7(h: Any) -> str:
    assert len(h) == SEGMENTS_PER_MESSAGE
    return str(h.segment("MSH")[10])


def _fp_hl7apy(m: Any) -> str:
    return str(m.msh.msh_10.value)


def _fp_ours(m: Message) -> str:
    assert len(m.segments) == SEGMENTS_PER_MESSAGE
    return m.control_id


def _fp_er7(text: str) -> str:
    assert text.count("\r") == SEGMENTS_PER_MESSAGE, "serialised message lost segments"
    return text.split("|", 10)[9]


def _fp_fields(values: tuple[str, ...]) -> str:
    assert len(values) == len(FIELDS) and all(values), "a mapped field read empty"
    return values[0]


def _check(
    label: str,
    fn: Callable[[Any], Any],
    fingerprint: Callable[[Any], str],
    inputs: Sequence[Any],
    expected: Sequence[str],
) -> None:
    got = [fingerprint(fn(item)) for item in inputs]
    assert len(got) == len(inputs) == len(expected), f"{label}: parsed {len(got)} messages"
    assert got == list(expected), f"{label}: results differ from python-hl7"


# -- the suite ---------------------------------------------------------------------------------


def _data_file(count: int, regenerate: bool) -> tuple[Path, list[str], list[bytes]]:
    """The message file, (re)generated when missing or stale, pre-split into text and bytes."""
    path = DATA_DIR / f"adt_a04_{count}.hl7"
    path, written = synth.ensure_file(path, count, synth.DEFAULT_SEED, regenerate)
    if written:
        print(f"generated {path} ({count:,} messages, seed {synth.DEFAULT_SEED})")
    data = path.read_bytes()
    as_bytes = [m for _, m in split_messages(data) if isinstance(m, bytes)]
    as_text = [m for _, m in split_messages(data.decode("utf-8")) if isinstance(m, str)]
    assert len(as_text) == len(as_bytes) == count, f"{path}: wrong size; use --regenerate"
    return path, as_text, as_bytes


def run(options: Options) -> dict[str, Any]:
    count = QUICK_COUNT if options.quick else FULL_COUNT
    sample_size = min(HL7APY_SAMPLE_QUICK if options.quick else HL7APY_SAMPLE, count)
    repeat = options.repeat
    path, texts, blobs = _data_file(count, options.regenerate)
    sample = texts[:sample_size]
    size = sum(len(b) for b in blobs)

    print(
        f"codec: {path.relative_to(DATA_DIR.parent.parent)}: {count:,} ADT^A04 messages, "
        f"{size / count:,.0f} bytes each on average; best of {repeat}, gc enabled"
    )
    print(f"hl7apy is timed on a sample of the first {sample_size} messages\n")

    # Untimed check (and warm-up): every contestant, every message, the same answers as python-hl7
    # (which is the reference, so it is not checked against itself).
    control_ids: list[str] = []
    mrns: list[str] = []
    for text in texts:
        h = _python_hl7(text)
        control_ids.append(_fp_python_hl7(h))
        mrns.append(str(h.segment("PID")[3][0][0]))
    contestants: list[tuple[str, str, Callable[[Any], Any], Callable[[Any], str], list[Any]]] = [
        ("a", "python-hl7 hl7.parse", _python_hl7, _fp_python_hl7, texts),
        ("b", "hl7apy parse_message", _hl7apy, _fp_hl7apy, sample),
        ("c", "ours parse_message (lazy)", parse_message, _fp_ours, texts),
        ("d", f"ours parse + read {len(FIELDS)} fields", _read_fields, _fp_fields, texts),
        ("e", "ours parse + to_er7", _round_trip, _fp_er7, texts),
        ("f", "ours parse + full split + to_er7", _full_split, _fp_er7, texts),
        ("g", "ours parse_message(bytes)", parse_message, _fp_ours, blobs),
    ]
    for key, label, fn, fingerprint, inputs in contestants[1:]:
        expected = mrns if key == "d" else control_ids
        _check(label, fn, fingerprint, inputs, expected[: len(inputs)])
    exact = sum(_round_trip(t) == t + "\r" for t in texts)
    gc.collect()

    timings: list[Timing] = []
    for key, label, fn, _, inputs in contestants:
        note = f"sample of {len(inputs)}" if inputs is sample else ""
        t = measure(key, label + (f" ({note})" if note else ""), fn, inputs, repeat, note)
        timings.append(t)
        print(f"  {key}  {t.label}: {t.best_rate:,.0f} msg/s", flush=True)
    counts = {t.key: t.messages for t in timings}
    assert all(n == count for k, n in counts.items() if k != "b"), counts
    assert counts["b"] == sample_size, counts

    print()
    print(format_table(timings, [("a", "vs python-hl7"), ("b", "vs hl7apy")]))
    rates = {t.key: t.best_rate for t in timings}
    ratio = rates["c"] / rates["a"]
    print(
        f"\nround trip exact (to_er7 == input): {exact:,}/{count:,}; "
        f"goal ours parse >= 20x python-hl7: {'met' if ratio >= 20 else 'NOT met'} ({ratio:.1f}x)"
    )
    return {
        "suite": "codec",
        "quick": options.quick,
        "environment": environment(["hl7", "hl7apy", "hl7-engine"]),
        "data": {
            "file": str(path),
            "messages": count,
            "bytes": size,
            "seed": synth.DEFAULT_SEED,
            "segments_per_message": SEGMENTS_PER_MESSAGE,
            "hl7apy_sample": sample_size,
        },
        "repeat": repeat,
        "fields_read": list(FIELDS),
        "round_trip_exact": exact,
        "results": [
            {
                **t.as_dict(),
                "vs_python_hl7": round(t.best_rate / rates["a"], 2),
                "vs_hl7apy": round(t.best_rate / rates["b"], 2),
            }
            for t in timings
        ],
    }
