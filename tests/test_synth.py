"""The synthetic ADT^A04 generator behind the benchmarks: deterministic, parseable, realistic."""

from __future__ import annotations

import random
from pathlib import Path

from bench.synth import generate, make_adt_a04, write_file
from engine.hl7v2 import parse_message, split_messages

COUNT = 40
SEED = 7


def test_same_seed_same_text() -> None:
    assert list(generate(COUNT, SEED)) == list(generate(COUNT, SEED))
    assert list(generate(COUNT, SEED)) != list(generate(COUNT, SEED + 1))
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert make_adt_a04(rng_a, 1) == make_adt_a04(rng_b, 1)


def test_messages_parse_with_the_expected_segments() -> None:
    control_ids = set()
    for text in generate(COUNT, SEED):
        assert text.endswith("\r") and "\n" not in text
        msg = parse_message(text)
        names = [s.name for s in msg.segments]
        assert len(names) == 10
        assert names[:6] == ["MSH", "EVN", "PID", "PD1", "NK1", "PV1"]
        assert names[6] in ("PV2", "DG1")
        assert names[7:] == ["IN1", "IN2", "IN1"]
        assert str(msg.type) == "ADT^A04" and msg.type.structure == "ADT_A01"
        assert msg.version == "2.5.1"
        control_ids.add(msg.control_id)
        assert msg.get("PID-3[1].5") == "MR" and msg.get("PID-3[2].4.1") == "EMPI"
        assert msg.get("PID-5.1") and msg.get("PID-5.2") and msg.get("PID-7")
        assert msg.get("PID-13.6") == "555"
        assert len(msg.get("PV1-7.1")) == 10
        assert msg.get("IN1[1]-22") == "1" and msg.get("IN1[2]-22") == "2"
        assert msg.get("IN1[1]-36") and msg.get("IN1[2]-36")
    assert len(control_ids) == COUNT


def test_escapes_and_non_ascii_present() -> None:
    texts = list(generate(COUNT, SEED))
    joined = "".join(texts)
    for seq in ("\\T\\", "\\F\\", "\\S\\"):
        assert seq in joined
    assert any(ord(ch) > 127 for ch in joined)
    names = {parse_message(t).get("IN1[1]-4.1") for t in texts}
    names |= {parse_message(t).get("IN1[2]-4.1") for t in texts}
    assert any("&" in n for n in names)
    for text in texts:  # non-ASCII text is declared in MSH-18
        if any(ord(ch) > 127 for ch in text):
            assert parse_message(text).get("MSH-18") == "UNICODE UTF-8"


def test_write_file_round_trips_through_split(tmp_path: Path) -> None:
    path = write_file(tmp_path / "adt.hl7", 5, SEED)
    pieces = [m for _, m in split_messages(path.read_bytes())]
    assert len(pieces) == 5
    first = parse_message(pieces[0])
    assert first.control_id == parse_message(next(generate(1, SEED))).control_id
