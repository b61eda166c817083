"""MLLP framing (engine/adapters/mllp/framing.py) and the client's reading of a peer's ACK.

One input is ``[limit][chunking][stream]``: byte 0 picks the frame limit (16 bytes to 1 MiB),
bytes 1-2 seed how the stream is cut into packets (1 byte to 64 KiB each), the rest is what the
peer sent: frames of seed messages and ACKs with noise, stray and doubled block bytes, frames
cut short. The stream is fed to one :class:`FrameReader` whole and to another packet by packet;
unless a frame passes the limit (``FrameTooLarge``, its typed error), both must give the same
frames, and no frame may hold a start block. Every frame is then read as the ACK the MLLP client
waits for (``judge_ack``).
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from engine.adapters.mllp.client import judge_ack
from engine.adapters.mllp.framing import END_BLOCK, START_BLOCK, FrameReader, FrameTooLarge, frame
from engine.errors import EngineError
from engine.hl7v2.codec import parse_message
from fuzz.mutate import Program, mutate_bytes
from fuzz.runner import Oracle, Target
from fuzz.seeds import er7_seeds

__all__ = ["TARGET", "run"]

LIMITS = (16, 64, 256, 1024, 4096, 65536, 2**20, 2**20)
TOKENS: tuple[bytes, ...] = (
    START_BLOCK,
    END_BLOCK,
    b"\x1c",
    b"\r",
    b"\x0b\x0b",
    b"\x1c\x1c\r\r",
    b"\x1c\x0b\r",
    b"\x00",
    b"MSA|AA|",
    b"MSA|AE|",
    b"MSA|CR|",
    b"\rERR|||207\r",
    b"MSH|^~\\&|",
)

_ACKS = (
    b"MSH|^~\\&|R|RF|S|SF|20260101||ACK^A01^ACK|A1|P|2.5.1\rMSA|AA|C1",
    b"MSH|^~\\&|R|RF|S|SF|20260101||ACK^A01^ACK|A2|P|2.5.1\rMSA|AE|C1|bad\rERR|||207^x^HL70357",
    b"MSH|^~\\&|R|RF|S|SF|20260101||ACK|A3|P|2.3\rMSA|CR|C1\rERR|PID^1^3^^1^1&207",
)


def _stream(parts: list[bytes], prog: bytes) -> bytes:
    return mutate_bytes(b"".join(frame(p) for p in parts), Program(prog), TOKENS)


def strategy() -> st.SearchStrategy[bytes]:
    payloads = st.sampled_from(_ACKS + tuple(s[:4096] for s in er7_seeds()))
    head = st.binary(min_size=3, max_size=3)
    body = st.builds(_stream, st.lists(payloads, min_size=1, max_size=4), st.binary(max_size=24))
    noise = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=8), max_size=60).map(b"".join)
    return st.builds(lambda h, b: h + b, head, body | noise)


def _chunks(stream: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(stream):
        n = rng.choice((1, 2, 3, 7, 64, 1024, 65536))
        out.append(stream[pos : pos + n])
        pos += n
    return out


def _feed(limit: int, packets: list[bytes]) -> tuple[list[bytes], bool]:
    reader = FrameReader(limit)
    frames: list[bytes] = []
    too_large = False
    for packet in packets:
        try:
            frames += reader.feed(packet)
        except FrameTooLarge as exc:
            too_large = True
            if len(exc.head) > 4096:
                raise Oracle("FrameTooLarge keeps more than 4096 bytes of head") from exc
    return frames, too_large


def run(data: bytes) -> None:
    """One stream fed whole and in packets; each frame read as an ACK."""
    limit = LIMITS[data[0] % len(LIMITS)] if data else 2**20
    seed = int.from_bytes(data[1:3], "big")
    stream = data[3:]
    whole, big_whole = _feed(limit, [stream])
    parts, big_parts = _feed(limit, _chunks(stream, seed))
    if not (big_whole or big_parts) and whole != parts:
        raise Oracle("frames differ when the same bytes arrive in other packets")
    for payload in parts:
        if START_BLOCK in payload:
            raise Oracle("a frame holds a start block")
        try:
            judge_ack(parse_message(payload), "C1")
        except EngineError:
            pass
    if big_whole or big_parts:
        raise FrameTooLarge(limit, b"")


TARGET = Target(
    "mllp",
    strategy,
    run,
    typed=(EngineError, FrameTooLarge),
    about="FrameReader fed whole and in packets (same frames), judge_ack on every frame",
)
