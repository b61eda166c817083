"""MLLP deframing: split frames, merged frames, bytes between frames, oversize."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.adapters.mllp.framing import FrameReader, FrameTooLarge, frame


def test_one_frame() -> None:
    assert FrameReader(1000).feed(frame(b"MSH|a")) == [b"MSH|a"]


def test_split_across_packets_including_the_end_block() -> None:
    r = FrameReader(1000)
    assert r.feed(b"\x0bMSH|") == []
    assert r.in_frame
    assert r.feed(b"abc\x1c") == []
    assert r.feed(b"\x0d") == [b"MSH|abc"]
    assert not r.in_frame


def test_several_frames_in_one_packet_and_garbage_between() -> None:
    r = FrameReader(1000)
    data = b"noise" + frame(b"one") + b"\r\n" + frame(b"two") + frame(b"three")
    assert r.feed(data) == [b"one", b"two", b"three"]
    assert r.skipped == len(b"noise") + 2


def test_unterminated_frame_is_dropped_when_a_new_one_starts() -> None:
    r = FrameReader(1000)
    assert r.feed(b"\x0bhalf a message") == []
    assert r.feed(frame(b"whole")) == [b"whole"]
    assert r.skipped == len(b"half a message") + 1


def test_fs_without_cr_stays_data() -> None:
    # FS alone is not an end block; only FS CR ends a frame
    assert FrameReader(1000).feed(b"\x0ba\x1cb\x1c\x0d") == [b"a\x1cb"]


def test_oversize_frame_raises_with_its_head() -> None:
    r = FrameReader(100)
    with pytest.raises(FrameTooLarge) as info:
        r.feed(b"\x0bMSH|^~\\&|" + b"x" * 200)
    assert info.value.head.startswith(b"MSH|^~\\&|")
    assert info.value.limit == 100
    # the reader is usable again
    assert r.feed(frame(b"small")) == [b"small"]


def test_oversize_detected_across_packets() -> None:
    r = FrameReader(100)
    r.feed(b"\x0b" + b"x" * 60)
    with pytest.raises(FrameTooLarge):
        r.feed(b"y" * 60)


def test_frames_completed_before_an_overflow_in_the_same_read_are_kept() -> None:
    # issue 14: one read held a whole frame and then the bytes that overflowed the next one; the
    # whole frame was lost with the error
    r = FrameReader(100)
    with pytest.raises(FrameTooLarge) as info:
        r.feed(frame(b"one") + frame(b"two") + b"\x0bMSH|^~\\&|" + b"x" * 200)
    assert info.value.frames == [b"one", b"two"]
    assert info.value.head.startswith(b"MSH|^~\\&|")
    # the end block straddling the previous read completes a frame before the overflow too
    r = FrameReader(100)
    assert r.feed(b"\x0bthree\x1c") == []
    with pytest.raises(FrameTooLarge) as info:
        r.feed(b"\x0d\x0b" + b"y" * 200)
    assert info.value.frames == [b"three"]
    # an overflow with nothing complete before it carries no frames
    with pytest.raises(FrameTooLarge) as info:
        FrameReader(100).feed(b"\x0b" + b"z" * 200)
    assert info.value.frames == []


@given(
    payloads=st.lists(
        st.binary(min_size=1, max_size=300).filter(lambda b: b"\x0b" not in b and b"\x1c" not in b),
        min_size=1,
        max_size=5,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=30),
)
def test_any_packetisation_yields_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(p) for p in payloads)
    r = FrameReader(10_000)
    out: list[bytes] = []
    pos = 0
    for cut in cuts:
        out += r.feed(stream[pos : pos + cut])
        pos += cut
    out += r.feed(stream[pos:])
    assert out == payloads
