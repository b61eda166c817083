"""The ER7 codec, the batch reader and the ACKs built from what they read.

One input is bytes as a sender might send them: a seed message or batch file mutated with ER7's
own delimiters and segment IDs, or bytes from scratch. It is parsed as one message (and every
field of every segment read, the message written back and read again: the canonical text must be
a fixed point), answered (an AA for a message that parses, the reject the receiver sends for one
that does not, which must never raise), and read as a batch file and message by message.
"""

from __future__ import annotations

from hypothesis import strategies as st

from engine.errors import EngineError
from engine.hl7v2.ack import ack_bytes, build_ack, errors_for, nak_for_unparseable
from engine.hl7v2.batch import iter_messages, parse_batch
from engine.hl7v2.codec import Message, parse_message
from fuzz.mutate import Program, mutate_bytes
from fuzz.runner import Oracle, Target
from fuzz.seeds import er7_seeds

__all__ = ["TARGET", "run"]

TOKENS: tuple[bytes, ...] = (
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"#",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x0b",
    b"\x1c\r",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"\rMSH|^~\\&|",
    b"\rMSH|",
    b"\rFHS|^~\\&|",
    b"\rBHS|^~\\&|",
    b"\rBTS|",
    b"\rFTS|",
    b"\rBTS|1",
    b"\rFTS|99",
    b"\rPID|",
    b"\rOBX|",
    b"\rZZZ|",
    b"\\X41\\",
    b"\\X\\",
    b"\\XZZ\\",
    b"\\E\\",
    b"\\F\\",
    b"\\.br\\",
    b"\\H\\",
    b"\\Zabc\\",
    b"\\C2842\\",
    b"\\M2442\\",
    b"UNICODE UTF-8",
    b"8859/1",
    b"ISO IR100",
    b"GB 18030-2000",
    b"BIG-5",
    b"ADT^A01^ADT_A01",
    b"SIU^S12",
    b"ACK",
    b"2.5.1",
    b"AL",
    b"NE",
    b"ER",
)

_FIXED_TS = "20260101120000"


def strategy() -> st.SearchStrategy[bytes]:
    seeds = er7_seeds()
    mutated = st.builds(
        lambda seed, prog: mutate_bytes(seed, Program(prog), TOKENS, seeds),
        st.sampled_from(seeds),
        st.binary(min_size=1, max_size=48),
    )
    tokens = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=6), max_size=40).map(
        lambda parts: b"MSH|^~\\&|" + b"".join(parts)
    )
    return st.one_of(mutated, mutated, mutated, tokens, st.binary(max_size=512))


def _read_all(msg: Message) -> None:
    """Every field, repetition and component the way the engine's readers reach them."""
    _ = (msg.type, msg.control_id, msg.version, repr(msg))
    for seg in msg.segments:
        for n in range(1, len(seg) + 1):
            seg.get(n)
            seg.get(n, 2, 2, 2)
            for rep in seg.repetitions(n):
                rep.components()
                rep.get(3, 2)


def _round_trip(msg: Message) -> None:
    text = msg.to_er7()
    again = parse_message(text)
    # MLLP block bytes in data (a VT ending the last field) are read as framing when the text
    # is read again: the codec tolerates them around a message, and MLLP cannot carry them
    if again.to_er7() != text and "\x0b" not in text and "\x1c" not in text:
        raise Oracle("the canonical ER7 of a parsed message is not a fixed point")
    msg.to_bytes()


def run(data: bytes) -> None:
    """One input through the codec, the ACK builders and the batch reader."""
    msg: Message | None = None
    try:
        msg = parse_message(data)
    except EngineError as exc:
        ack, _ = nak_for_unparseable(
            data, exc, control_id="F1", timestamp=_FIXED_TS, sending=("ENGINE", "FUZZ")
        )
        if ack is None:
            raise Oracle("nak_for_unparseable could not build the reject") from exc
        parse_message(ack)
    if msg is not None:
        try:
            _read_all(msg)
            _round_trip(msg)
            ack_bytes(msg, "AA", control_id="F2", timestamp=_FIXED_TS)
            err = EngineError("synthetic", where="PID-3")
            build_ack(msg, "AE", control_id="F3", timestamp=_FIXED_TS, errors=errors_for(err, msg))
        except EngineError:
            pass
    try:
        batch = parse_batch(data)
        for m in batch.messages:
            _ = (m.type, m.control_id)
    except EngineError:
        pass
    try:
        for m in iter_messages(data):
            _ = m.control_id
    except EngineError:
        pass


TARGET = Target(
    "er7",
    strategy,
    run,
    about="parse_message, every field read, canonical round trip, ACK/NAK builders, "
    "parse_batch, iter_messages",
)
